"""Conceptual-Captions-style pairs: one `caption<TAB>image_id` per line."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vilbert.data.readers.common import FormatError, text_lines


@dataclass(frozen=True)
class CaptionPair:
    caption: str
    image_id: str  # as the feature store keys it: str(image_id)


def read_captions(path: str | os.PathLike[str]) -> list[CaptionPair]:
    """Read a caption TSV; an image may appear on several lines (several captions)."""
    pairs = []
    for number, line in text_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        caption, sep, image_id = line.rpartition("\t")
        if not sep or not caption.strip() or not image_id.strip():
            raise FormatError(f"{path}: line {number} is not 'caption<TAB>image_id': {line[:80]!r}")
        pairs.append(CaptionPair(caption.strip(), image_id.strip()))
    return pairs
