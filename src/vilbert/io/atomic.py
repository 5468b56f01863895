"""Atomic file writes: a reader (or a resumed job) never sees a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_SUFFIX = ".vilbert-tmp"  # only our own temporaries end so: cleaning them never touches a user's file


def remove_stale_temps(directory: str | os.PathLike[str], recursive: bool = False) -> int:
    """Delete the temporaries a killed job left in `directory` (the job that owns it calls this
    when it starts again); returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    found = directory.rglob(f"*{TEMP_SUFFIX}") if recursive else directory.glob(f"*{TEMP_SUFFIX}")
    removed = 0
    for path in found:
        if path.is_file() and path.name.startswith("."):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The temporary file lives in the same directory so the rename never crosses filesystems.
    On error the temporary file is removed and `path` keeps its old content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class DamagedFileError(ValueError):
    """A file the library wrote that no longer reads (cut short, edited, overwritten)."""


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """A JSON file the library wrote, or a DamagedFileError that names it and says what it is."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{path} ({what}) is damaged: {err}; delete it to start that part again") from err


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write a matplotlib `Figure` as PNG atomically. The library draws on Figure objects, never
    through pyplot, so it neither switches a notebook's backend nor leaves figures open."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
