"""Checksums of the files a directory holds (`checksums.json`), so flipped bits in a saved model or
a checkpoint are an error naming the file instead of a model that silently computes other numbers.

xxh3-128 streams at ~15 GB/s here: checking a base model's 1 GB of weights costs ~0.1 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import xxhash

from vilbert.io.atomic import write_json

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 24


class ChecksumError(ValueError):
    """A file does not match the checksum written beside it."""


def file_digest(path: str | Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return "xxh3-128:" + digest.hexdigest()


def write_checksums(directory: str | Path, names: Iterable[str]) -> None:
    """Record the digests of `names` (files in `directory`) in its checksums.json (atomically)."""
    directory = Path(directory)
    write_json(directory / CHECKSUMS_FILE, {name: file_digest(directory / name) for name in names})


def verify_checksums(directory: str | Path, names: Iterable[str] | None = None) -> bool:
    """Check `names` (default: every file listed) against checksums.json; False when the directory
    has none (written before checksums existed), True when all match; a mismatch raises."""
    directory = Path(directory)
    listing = directory / CHECKSUMS_FILE
    if not listing.is_file():
        return False
    try:
        expected = json.loads(listing.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChecksumError(f"{listing} is damaged ({err})") from err
    if not isinstance(expected, dict):
        raise ChecksumError(f"{listing} is damaged (not an object of file -> checksum)")
    for name in expected if names is None else names:
        if name not in expected:
            continue
        path = directory / name
        if not path.is_file():
            raise ChecksumError(f"{path} is missing (listed in {listing})")
        if file_digest(path) != expected[name]:
            raise ChecksumError(f"{path} does not match its checksum in {listing}: the file is damaged "
                                "(on disk or in a copy); restore it or save the model again")
    return True
