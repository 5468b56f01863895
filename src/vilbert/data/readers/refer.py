"""RefCOCO+ in the `refer` layout: `refs(unc).p` (a pickled list of refs) + `instances.json` (COCO).

The pickle is read with the allow-list unpickler (vilbert.io.safe_pickle): a data file cannot run
code. Each ref names one annotation (`ann_id`); its box comes from instances.json. One
`ReferExpression` is returned per sentence, as the original code trains on sentences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vilbert.data.readers.common import FormatError, load_json, require
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
    anns = {a["id"]: a for a in instances["annotations"]}
    sizes = {im["id"]: (im.get("width"), im.get("height")) for im in instances.get("images", [])}
    out = []
    for k, ref in enumerate(refs):
        require(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"), refs_path, f"ref {k}")
        if split is not None and ref["split"] != split:
            continue
        ann = anns.get(ref["ann_id"])
        if ann is None:
            raise FormatError(f"{refs_path}: ref {ref['ref_id']} names ann_id {ref['ann_id']}, "
                              f"which {inst_path} does not hold")
        x, y, w, h = ann["bbox"]
        width, height = sizes.get(ref["image_id"], (None, None))
        for s in ref["sentences"]:
            require(s, ("sent",), refs_path, f"ref {ref['ref_id']} sentence")
            tokens = tuple(s.get("tokens") or s["sent"].split())
            out.append(ReferExpression(ref["ref_id"], s.get("sent_id", -1), ref["ann_id"], str(ref["image_id"]),
                                       ref["split"], s["sent"], tokens, (x, y, x + w, y + h),
                                       ref.get("category_id", ann.get("category_id", 0)), width, height))
    return out
