"""Shared pieces of the readers: one error type that names the file and the record, and the checks
every reader applies where it takes a value in (a field of the wrong type or range is a
FormatError naming the file, the record, the field and the value, never a traceback or a value
silently read as something else: "1" + "3" as a box, `true` as label 1)."""

from __future__ import annotations

import json
import math
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
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a JSON file") from None
    except UnicodeDecodeError as err:
        raise FormatError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply") from None


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-empty line of a jsonlines file."""
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise FormatError(f"{path}: line {number} is not valid JSON ({err})") from None
        except RecursionError:
            raise FormatError(f"{path}: line {number} is JSON nested too deeply") from None


def text_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file; bytes that are not UTF-8 name the line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise FormatError(f"{path}: line {number} is not UTF-8 text (byte {err.start}: {err.reason})") from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def text_field(record: dict, key: str, path: str | os.PathLike[str], where: str, empty: bool = False) -> str:
    """`record[key]` as a string (non-empty unless `empty`)."""
    value = record[key]
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise FormatError(f"{path}: {where}: {key!r} must be a{'' if empty else ' non-empty'} string, got {_show(value)}")
    return value


def whole_field(record: dict, key: str, path: str | os.PathLike[str], where: str, minimum: int | None = None) -> int:
    """`record[key]` as an integer (not a bool, not a float, not a string of digits)."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise FormatError(f"{path}: {where}: {key!r} must be a whole number{bound}, got {_show(value)}")
    return value


def id_field(record: dict, key: str, path: str | os.PathLike[str], where: str) -> int | str:
    """An id: an integer or a non-empty string (not a bool, a float or a list)."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise FormatError(f"{path}: {where}: {key!r} must be an integer or a string id, got {_show(value)}")
    return value


def number(value: Any, path: str | os.PathLike[str], where: str) -> float:
    """A finite number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"{path}: {where}: expected a finite number, got {_show(value)}")
    return float(value)


def xywh_box(value: Any, path: str | os.PathLike[str], where: str) -> tuple[float, float, float, float]:
    """A COCO [x, y, width, height] box of finite numbers with positive width and height."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise FormatError(f"{path}: {where}: 'bbox' must be [x, y, width, height], got {_show(value)}")
    x, y, w, h = (number(v, path, f"{where} bbox") for v in value)
    if not (w > 0 and h > 0):
        raise FormatError(f"{path}: {where} has an empty bbox {_show(value)} (width and height must be > 0)")
    return x, y, w, h


def image_id_from_path(name: str) -> str:
    """'images/123.png' -> '123' (the feature store's key for that image)."""
    return Path(name).stem
