"""A small multi-file model and a hand-built Hugging Face hub cache of it."""

from __future__ import annotations

import hashlib
import os
import pathlib

import clarity_resilience as cr

FILES = {
    "model-00001-of-00002.safetensors": b"shard one " * 1000,
    "model-00002-of-00002.safetensors": b"shard two " * 1000,
    "config.json": b'{"layers": 2}',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
}


def make_hf_cache(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, cr.Manifest]:
    """Build a Hugging Face hub cache: blobs/<sha> and snapshots/<rev>/ symlinks into them."""
    repo = root / "models--org--tiny"
    blobs = repo / "blobs"
    snapshot = repo / "snapshots" / ("a" * 40)
    blobs.mkdir(parents=True)
    entries = []
    for name, data in FILES.items():
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blobs / digest, link.parent))
        entries.append(cr.ManifestEntry(name, digest, len(data)))
    return repo, snapshot, cr.Manifest(entries)
