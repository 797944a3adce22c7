"""Content fingerprints: the SHA-256 of a file, read in blocks, as provenance records, BIDS
derivatives and ``brainseg info`` name the model and the inputs they used."""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
