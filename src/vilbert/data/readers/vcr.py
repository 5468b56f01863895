"""VCR in jsonlines: question, answer_choices, answer_label, rationale_choices, rationale_label, objects.

As in the real VCR files, question/answer/rationale texts are token lists in which a token may be a
list of object indices: `[0]` stands for `objects[0]` (`[0, 2]` for two of them). Plain strings are
accepted too (tokenised on spaces). Boxes live in the per-image `metadata_fn` JSON
({"boxes": [[x1, y1, x2, y2, score], ...], ...}), read by `load_metadata`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from vilbert.data.readers.common import (
    FormatError,
    id_field,
    image_id_from_path,
    iter_jsonl,
    load_json,
    number,
    require,
    text_field,
    whole_field,
)

Token = Union[str, tuple[int, ...]]
_FIELDS = ("question", "answer_choices", "rationale_choices", "objects", "img_fn")


@dataclass(frozen=True)
class VCRExample:
    annot_id: str
    image_id: str  # stem of img_fn
    img_fn: str
    metadata_fn: str | None
    objects: tuple[str, ...]
    question: tuple[Token, ...]
    answer_choices: tuple[tuple[Token, ...], ...]
    rationale_choices: tuple[tuple[Token, ...], ...]
    answer_label: int | None  # None on an unlabelled (test) file
    rationale_label: int | None


def _tokens(value: object, objects: int, path: os.PathLike[str] | str, where: str) -> tuple[Token, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if not isinstance(value, list):
        raise FormatError(f"{path}: {where} must be a token list or a string, got {value!r:.80}")
    out: list[Token] = []
    for tok in value:
        if isinstance(tok, str):
            out.append(tok)
        elif isinstance(tok, list) and tok and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < objects
                                                   for i in tok):
            out.append(tuple(tok))
        else:
            raise FormatError(f"{path}: {where} has token {tok!r}: expected a word or a list of object "
                              f"indices below {objects}")
    return tuple(out)


def read_vcr(path: str | os.PathLike[str]) -> list[VCRExample]:
    out = []
    for line, rec in iter_jsonl(path):
        require(rec, _FIELDS, path, f"line {line}")
        where = f"line {line} ({rec.get('annot_id', '?')})"
        if not isinstance(rec["objects"], list) or not all(isinstance(o, str) and o for o in rec["objects"]):
            raise FormatError(f"{path}: {where}: 'objects' must be a list of object names, got {rec['objects']!r:.60}")
        for key in ("answer_choices", "rationale_choices"):
            if not isinstance(rec[key], list) or not rec[key]:
                raise FormatError(f"{path}: {where}: {key!r} must be a non-empty list of choices")
        text_field(rec, "img_fn", path, where)
        if rec.get("metadata_fn") is not None:
            text_field(rec, "metadata_fn", path, where)
        annot_id = str(id_field(rec, "annot_id", path, where)) if "annot_id" in rec else None
        n = len(rec["objects"])
        answers = tuple(_tokens(a, n, path, f"{where} answer") for a in rec["answer_choices"])
        rationales = tuple(_tokens(r, n, path, f"{where} rationale") for r in rec["rationale_choices"])
        labels = [rec.get("answer_label"), rec.get("rationale_label")]
        for name, label, choices in zip(("answer_label", "rationale_label"), labels, (answers, rationales)):
            if label is not None and not (isinstance(label, int) and not isinstance(label, bool)
                                          and 0 <= label < len(choices)):
                raise FormatError(f"{path}: {where} has {name}={label!r} for {len(choices)} choices")
        out.append(VCRExample(annot_id or f"{Path(path).stem}-{line}",
                              image_id_from_path(rec["img_fn"]), rec["img_fn"], rec.get("metadata_fn"),
                              tuple(rec["objects"]), _tokens(rec["question"], n, path, f"{where} question"),
                              answers, rationales, labels[0], labels[1]))
    return out


def tokens_to_words(tokens: tuple[Token, ...], objects: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """Words with each object reference spelled as its name, and per word the object it names (-1 if none).

    `[0, 2]` becomes "circle and square" (two objects named in one token).
    """
    words: list[str] = []
    refs: list[int] = []
    for tok in tokens:
        if isinstance(tok, str):
            words.append(tok)
            refs.append(-1)
            continue
        for j, index in enumerate(tok):
            if j:
                words.append("and")
                refs.append(-1)
            words.append(objects[index])
            refs.append(index)
    return words, refs


def metadata_path(vcr_path: str | os.PathLike[str], example: VCRExample,
                  images_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the example's metadata JSON is: the release keeps it beside its image (under
    vcr1images/, give `images_dir`), the generated world beside the jsonl file."""
    if example.metadata_fn is None:
        raise FormatError(f"{vcr_path}: {example.annot_id} has no metadata_fn")
    candidates = [Path(images_dir) / example.metadata_fn] if images_dir is not None else []
    candidates.append(Path(vcr_path).parent / example.metadata_fn)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{vcr_path}: metadata {example.metadata_fn!r} of {example.annot_id} is not at "
                            + " or ".join(str(c) for c in candidates))


def load_metadata(vcr_path: str | os.PathLike[str], example: VCRExample,
                  images_dir: str | os.PathLike[str] | None = None) -> dict:
    """The example's metadata JSON (boxes per object; see `metadata_path`)."""
    meta_path = metadata_path(vcr_path, example, images_dir)
    meta = load_json(meta_path)
    require(meta, ("boxes",), meta_path, "the top level")
    boxes = meta["boxes"]
    if not isinstance(boxes, list):
        raise FormatError(f"{meta_path}: 'boxes' must be a list of [x1, y1, x2, y2(, score)]")
    for k, box in enumerate(boxes):
        if not isinstance(box, list) or len(box) not in (4, 5):
            raise FormatError(f"{meta_path}: box {k} must be [x1, y1, x2, y2(, score)], got {box!r:.60}")
        x1, y1, x2, y2 = (number(v, meta_path, f"box {k}") for v in box[:4])
        if len(box) == 5:
            number(box[4], meta_path, f"box {k} score")
        if not (x2 > x1 and y2 > y1):
            raise FormatError(f"{meta_path}: a box has no area: box {k} {box[:4]} (boxes are x1, y1, x2, y2)")
    for key in ("width", "height"):
        if meta.get(key) is not None:
            whole_field(meta, key, meta_path, "the top level", minimum=1)
    if len(boxes) < len(example.objects):
        raise FormatError(f"{meta_path}: {len(meta['boxes'])} boxes for {len(example.objects)} objects "
                          f"of {example.annot_id}")
    return meta
