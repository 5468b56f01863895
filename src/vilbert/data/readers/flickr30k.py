"""Flickr30k retrieval splits in jsonlines: {"img_path", "sentences": [5 captions]} (+ optional "id")."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vilbert.data.readers.common import FormatError, id_field, image_id_from_path, iter_jsonl, require, text_field


@dataclass(frozen=True)
class RetrievalImage:
    image_id: str  # "id" when given, else the stem of img_path (how the original keys features)
    img_path: str
    captions: tuple[str, ...]


def read_flickr30k(path: str | os.PathLike[str]) -> list[RetrievalImage]:
    out = []
    lines: dict[str, int] = {}
    for number, rec in iter_jsonl(path):
        require(rec, ("img_path", "sentences"), path, f"line {number}")
        img_path = text_field(rec, "img_path", path, f"line {number}")
        sentences = rec["sentences"]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s.strip()
                                                                        for s in sentences):
            raise FormatError(f"{path}: line {number} ({img_path}): 'sentences' must be a non-empty list "
                              f"of non-empty strings, got {sentences!r:.80}")
        image_id = str(id_field(rec, "id", path, f"line {number}")) if "id" in rec else image_id_from_path(img_path)
        if image_id in lines:  # a second line would count the image twice in every recall
            raise FormatError(f"{path}: line {number} repeats image {image_id!r} of line {lines[image_id]}")
        lines[image_id] = number
        out.append(RetrievalImage(image_id, img_path, tuple(sentences)))
    return out
