"""The ``clarity-resilience`` command: create and verify manifests, hash files.

Exit status: 0 all verified, 1 an integrity failure (or any other failure: the
command fails closed), 2 a usage error, 130 interrupted (Ctrl-C). Problems go to
stderr, one line each, prefixed with the program name; nothing ever ends in a
traceback.

What the command needs beyond the package itself (``argparse``) is imported by
:func:`main`, once :func:`run` has its Ctrl-C handler in place, so that an interrupt
while it imports is one line too.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from ._integrity import sha256_file
from ._manifest import Manifest
from ._manifest_format import excerpt, format_hash_line
from ._progress import Progress
from ._reasons import Reason
from .exceptions import (
    ChecksumMismatchError,
    ClarityResilienceError,
    IntegrityError,
    SizeMismatchError,
)
from .instrumentation import get_on_event_hooks, set_on_event_hooks

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from types import FrameType

    Command = Callable[[argparse.Namespace], int]

__all__ = ["main", "run"]

PROG = "clarity-resilience"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# 128 + SIGINT, as shells report an interrupted command.
EXIT_INTERRUPTED = 130


def run() -> NoReturn:
    """Run the command line as a program and exit: the console script and ``python -m``.

    Ctrl-C (SIGINT) ends the program at once with status 130 and one line on stderr,
    wherever it lands: while modules import, while worker threads hash large files
    (they are not waited for), or while a result is printed.
    """
    signal.signal(signal.SIGINT, _exit_interrupted)
    sys.exit(main())


def _exit_interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    """Print one line and exit 130 now: no traceback, no wait for hashing threads."""
    # os.write, not print(): the interrupted code may be inside sys.stderr itself.
    os.write(2, f"{PROG}: interrupted\n".encode())
    os._exit(EXIT_INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status.

    An interrupt (``KeyboardInterrupt``) is reported in one line and returns 130; a
    program should call :func:`run` instead, which also exits at once.

    Args:
        argv: The arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 on an integrity (or other) failure, 2 on a usage error, 130
        when interrupted.
    """
    try:
        # The library's default structlog hook would print audit events to stdout,
        # mixed with manifest output; the command reports for itself.
        previous = get_on_event_hooks()
        set_on_event_hooks([])
        try:
            return _run(argv)
        finally:
            set_on_event_hooks(previous)
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


def _run(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits for --help, --version and usage errors
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if problem := _usage_problem(args):
        parser.print_usage(sys.stderr)
        _error(problem)
        return EXIT_USAGE
    command: Command = args.command
    try:
        return command(args)
    except ClarityResilienceError as e:
        _error(str(e))
    except OSError as e:
        _error(f"{e.filename if e.filename is not None else 'error'}: {e.strerror or e}")
    except Exception as e:  # noqa: BLE001 - fail closed with one line, never a traceback
        _error(f"internal error: {type(e).__name__}: {str(e)[:200]}")
    return EXIT_FAILURE


def _usage_problem(args: argparse.Namespace) -> str | None:
    """Return what is wrong with a combination of options argparse cannot check."""
    if args.command is create and args.model_version is not None and args.format != "json":
        return "--model-version is recorded only by --format json"
    if args.command is create and args.chunk_size is not None and args.format != "json":
        return "--chunk-size is recorded only by --format json"
    if args.command is verify:
        keys = (args.public_key is not None) + (args.certificate_chain is not None)
        if args.signature is not None and keys != 1:
            return "--signature needs exactly one of --public-key or --certificate-chain"
        if args.signature is None and keys:
            return "--public-key and --certificate-chain go with --signature"
    return None


def _progress(args: argparse.Namespace, files: int, total_bytes: int | None) -> Progress:
    """Return the progress display: drawn on a terminal's stderr unless ``--quiet``."""
    enabled = not args.quiet and sys.stderr.isatty()
    return Progress(sys.stderr, files=files, total_bytes=total_bytes, enabled=enabled)


def create(args: argparse.Namespace) -> int:
    """Build a manifest of a directory and write it to a file or stdout."""
    exclude = []
    if args.output is not None and (inside := _relative_inside(args.directory, args.output)):
        exclude.append(inside)  # the manifest must not list itself
    progress = _progress(args, files=0, total_bytes=None)
    try:
        manifest = Manifest.build(
            args.directory,
            version=args.model_version,
            exclude=exclude,
            workers=args.workers,
            progress=progress,
            chunk_size=args.chunk_size,
        )
    finally:
        progress.close()
    if args.output is None:
        _write_stdout(manifest.dumps(args.format))
        return EXIT_OK
    try:
        manifest.write(args.output, format=args.format)
    except OSError as e:
        # Name the requested file, not the temporary one the error carries.
        _error(f"{args.output}: cannot write the manifest: {e.strerror or e}")
        return EXIT_FAILURE
    return EXIT_OK


def _trusted_manifest(args: argparse.Namespace) -> tuple[Manifest, str]:
    """Return the manifest to check against, and the file it came from.

    A signature is authenticated with the key or certificate chain named on the command
    line (the trust root); a plain manifest is taken as given.
    """
    if args.signature is None:
        return Manifest.read(args.manifest), args.manifest
    if args.public_key is not None:
        signed = Manifest.from_signature(args.signature, public_key=args.public_key)
    else:
        signed = Manifest.from_signature(args.signature, certificate_chain=args.certificate_chain)
    return signed, args.signature


def verify(args: argparse.Namespace) -> int:
    """Check a directory against a manifest or a signature; print one line per problem."""
    manifest, source = _trusted_manifest(args)
    exclude = []
    if inside := _relative_inside(args.directory, source):
        exclude.append(inside)
    sizes = [entry.size for entry in manifest.entries.values()]
    total = None if any(size is None for size in sizes) else sum(s for s in sizes if s)
    progress = _progress(args, files=len(manifest), total_bytes=total)
    try:
        problems = manifest.check(
            args.directory,
            allow_extra=args.allow_extra,
            expected_version=args.expected_version,
            exclude=exclude,
            workers=args.workers,
            progress=progress,
        )
    finally:
        progress.close()
    for problem in problems:
        _error(describe(problem, args.directory))
    if problems:
        return EXIT_FAILURE
    _write_stdout(f"{_printable(args.directory)}: OK ({len(manifest)} files verified)\n")
    return EXIT_OK


def hash_files(args: argparse.Namespace) -> int:
    """Print a ``sha256sum`` line for each file; report unreadable ones and go on."""
    status = EXIT_OK
    for name in args.files:
        try:
            digest = sha256_file(name)
        except IntegrityError as e:
            cause = e.__cause__ if isinstance(e.__cause__, OSError) else None
            _error(f"{_printable(name)}: {cause.strerror if cause else e}")
            status = EXIT_FAILURE
            continue
        _write_stdout(format_hash_line(name, digest))
    return status


def describe(problem: IntegrityError, directory: str) -> str:
    """Return one short line for a problem, naming the file relative to ``directory``."""
    name = _display_name(problem.path, directory)
    if isinstance(problem, ChecksumMismatchError):
        return f"{name}: checksum mismatch"
    if isinstance(problem, SizeMismatchError):
        return f"{name}: size mismatch (expected {problem.expected} bytes, found {problem.actual})"
    if problem.reason is Reason.VERSION_MISMATCH:
        return (
            f"model version mismatch: expected {excerpt(problem.expected)}, "
            f"manifest has {excerpt(problem.actual)}"
        )
    message = str(problem)
    if problem.path and message.startswith(problem.path):
        message = message[len(problem.path) :].lstrip()
    return f"{name}: {_printable(message)}"


def _display_name(path: str | None, directory: str) -> str:
    if path is None:
        return _printable(directory)
    root = os.path.join(directory, "")
    return _printable(path[len(root) :] if path.startswith(root) else path)


def _relative_inside(directory: str, path: str) -> str | None:
    """Return ``path`` relative to ``directory`` if it lies inside it, else ``None``."""
    root = os.path.realpath(directory)
    target = os.path.realpath(path)
    if os.path.commonpath([root, target]) != root or target == root:
        return None
    return os.path.relpath(target, root).replace(os.sep, "/")


def _printable(text: str) -> str:
    # One problem, one line: a newline or escape sequence in a file name must not
    # forge extra lines or drive the terminal.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _error(message: str) -> None:
    print(f"{PROG}: {_printable(message)}", file=sys.stderr)


def _write_stdout(text: str) -> None:
    # Bytes, not text: a name that is not UTF-8 must come out as sha256sum writes it.
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8", "surrogateescape"))
    buffer.flush()


def _workers(value: str) -> int:
    import argparse

    try:
        workers = int(value)
    except ValueError:
        workers = 0
    if workers < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value!r}")
    return workers


def _parser() -> argparse.ArgumentParser:
    import argparse

    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Create and verify SHA-256 manifests of model directories.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    manifest = commands.add_parser("manifest", help="work with manifest files")
    manifest_commands = manifest.add_subparsers(title="commands", required=True, metavar="ACTION")
    make = manifest_commands.add_parser("create", help="hash a directory into a manifest")
    make.add_argument("directory", metavar="DIR", help="the model directory")
    make.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    make.add_argument("--format", choices=("sha256sum", "json"), default="sha256sum")
    make.add_argument("--model-version", metavar="V", help="record this version (json only)")
    make.add_argument("--workers", type=_workers, metavar="N", help="hashing threads")
    make.add_argument(
        "--chunk-size",
        type=_workers,
        metavar="BYTES",
        help="also record per-chunk digests of larger files (json only): parallel reads",
    )
    make.add_argument("-q", "--quiet", action="store_true", help="no progress on a terminal")
    make.set_defaults(command=create)

    check = commands.add_parser("verify", help="verify a directory against a manifest")
    check.add_argument("directory", metavar="DIR", help="the model directory")
    trust = check.add_mutually_exclusive_group(required=True)
    trust.add_argument("--manifest", metavar="FILE", help="the manifest")
    trust.add_argument(
        "--signature", metavar="FILE", help="an OpenSSF Model Signing bundle (model.sig)"
    )
    check.add_argument("--public-key", metavar="FILE", help="the signer's public key (PEM)")
    check.add_argument(
        "--certificate-chain",
        metavar="FILE",
        nargs="+",
        help="the trusted certificate chain (PEM files)",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="no progress on a terminal")
    check.add_argument("--allow-extra", action="store_true", help="accept unlisted files")
    check.add_argument("--expected-version", metavar="V", help="require this model version")
    check.add_argument("--workers", type=_workers, metavar="N", help="hashing threads")
    check.set_defaults(command=verify)

    digest = commands.add_parser("hash", help="print sha256sum lines for files")
    digest.add_argument("files", nargs="+", metavar="FILE", help="files to hash")
    digest.set_defaults(command=hash_files)
    return parser
