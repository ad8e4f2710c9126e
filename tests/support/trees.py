"""Build small directory trees of real files for tests."""

from __future__ import annotations

import pathlib


def make_tree(root: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    """Write ``files`` (relative path -> bytes) below ``root``; return ``root``."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
