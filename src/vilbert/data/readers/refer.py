"""RefCOCO+ in the `refer` layout: `refs(unc).p` (a pickled list of refs) + `instances.json` (COCO).

The pickle is read with the allow-list unpickler (vilbert.io.safe_pickle): a data file cannot run
code. Each ref names one annotation (`ann_id`); its box comes from instances.json. One
`ReferExpression` is returned per sentence, as the original code trains on sentences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vilbert.data.readers.common import FormatError, id_field, load_json, require, text_field, whole_field, xywh_box
from vilbert.io.safe_pickle import safe_load_file


@dataclass(frozen=True)
class ReferExpression:
    ref_id: int
    sent_id: int
    ann_id: int
    image_id: str
    split: str
    sentence: str
    tokens: tuple[str, ...]
    box: tuple[float, float, float, float]  # target, pixels x1, y1, x2, y2
    category_id: int
    image_width: int | None = None
    image_height: int | None = None


def read_refer(directory: str | os.PathLike[str], split: str | None = None, refs_file: str = "refs(unc).p",
               instances_file: str = "instances.json") -> list[ReferExpression]:
    """Expressions of `split` (all splits when None) from a refer-layout directory."""
    refs_path, inst_path = Path(directory) / refs_file, Path(directory) / instances_file
    refs = safe_load_file(str(refs_path))
    if not isinstance(refs, list):
        raise FormatError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    instances = load_json(inst_path)
    require(instances, ("annotations",), inst_path, "the top level")
    anns, sizes = _annotations(instances, inst_path), _image_sizes(instances, inst_path)
    out = []
    for k, ref in enumerate(refs):
        where = f"ref {k}"
        require(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"), refs_path, where)
        ref_id = id_field(ref, "ref_id", refs_path, where)
        ann_id = id_field(ref, "ann_id", refs_path, where)
        image_id = id_field(ref, "image_id", refs_path, where)
        if text_field(ref, "split", refs_path, where) != split and split is not None:
            continue
        ann = anns.get(ann_id)
        if ann is None:
            raise FormatError(f"{refs_path}: ref {ref_id} names ann_id {ann_id}, which {inst_path} does not hold")
        x, y, w, h = xywh_box(ann["bbox"], inst_path, f"annotation {ann_id}")
        width, height = sizes.get(image_id, (None, None))
        if not isinstance(ref["sentences"], list) or not ref["sentences"]:
            raise FormatError(f"{refs_path}: ref {ref_id}: 'sentences' must be a non-empty list")
        category = ref.get("category_id", ann.get("category_id", 0))
        for s in ref["sentences"]:
            require(s, ("sent",), refs_path, f"ref {ref_id} sentence")
            sentence = text_field(s, "sent", refs_path, f"ref {ref_id} sentence")
            tokens = s.get("tokens") or sentence.split()
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise FormatError(f"{refs_path}: ref {ref_id} sentence: 'tokens' must be a list of strings")
            sent_id = id_field(s, "sent_id", refs_path, f"ref {ref_id} sentence") if "sent_id" in s else -1
            out.append(ReferExpression(ref_id, sent_id, ann_id, str(image_id), ref["split"], sentence, tuple(tokens),
                                       (x, y, x + w, y + h), category, width, height))
    return out


def _annotations(instances: dict, path: Path) -> dict[int | str, dict]:
    if not isinstance(instances["annotations"], list):
        raise FormatError(f"{path}: 'annotations' must be a list")
    out = {}
    for k, ann in enumerate(instances["annotations"]):
        require(ann, ("id", "bbox"), path, f"annotation {k}")
        out[id_field(ann, "id", path, f"annotation {k}")] = ann
    return out


def _image_sizes(instances: dict, path: Path) -> dict[int | str, tuple[int | None, int | None]]:
    images = instances.get("images", [])
    if not isinstance(images, list):
        raise FormatError(f"{path}: 'images' must be a list")
    sizes = {}
    for k, im in enumerate(images):
        require(im, ("id",), path, f"image {k}")
        size = tuple(whole_field(im, key, path, f"image {k}", minimum=1) if key in im else None
                     for key in ("width", "height"))
        sizes[id_field(im, "id", path, f"image {k}")] = size
    return sizes
