"""Shared pieces of the readers: one error type that names the file and the record."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator


class FormatError(ValueError):
    """A data file does not follow its format; the message names the file and the record."""


def require(record: Any, keys: tuple[str, ...], path: str | os.PathLike[str], where: str) -> None:
    """Raise FormatError unless `record` is a dict holding every key in `keys`."""
    if not isinstance(record, dict):
        raise FormatError(f"{path}: {where} is a {type(record).__name__}, expected an object")
    missing = [k for k in keys if k not in record]
    if missing:
        raise FormatError(f"{path}: {where} lacks {', '.join(repr(k) for k in missing)} "
                          f"(has {', '.join(sorted(map(str, record))) or 'nothing'})")


def load_json(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: not valid JSON ({err})") from None


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-empty line of a jsonlines file."""
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise FormatError(f"{path}: line {number} is not valid JSON ({err})") from None


def image_id_from_path(name: str) -> str:
    """'images/123.png' -> '123' (the feature store's key for that image)."""
    return Path(name).stem
