"""Flickr30k retrieval splits in jsonlines: {"img_path", "sentences": [5 captions]} (+ optional "id")."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vilbert.data.readers.common import FormatError, image_id_from_path, iter_jsonl, require


@dataclass(frozen=True)
class RetrievalImage:
    image_id: str  # "id" when given, else the stem of img_path (how the original keys features)
    img_path: str
    captions: tuple[str, ...]


def read_flickr30k(path: str | os.PathLike[str]) -> list[RetrievalImage]:
    out = []
    for number, rec in iter_jsonl(path):
        require(rec, ("img_path", "sentences"), path, f"line {number}")
        sentences = rec["sentences"]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
            raise FormatError(f"{path}: line {number} ({rec['img_path']}): 'sentences' must be a non-empty list "
                              f"of strings, got {sentences!r:.80}")
        image_id = str(rec["id"]) if "id" in rec else image_id_from_path(rec["img_path"])
        out.append(RetrievalImage(image_id, rec["img_path"], tuple(sentences)))
    return out
