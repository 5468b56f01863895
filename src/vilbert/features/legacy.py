"""Import the original code's region-feature LMDBs into our store.

The original layout (SPEC section 4): key `str(image_id)` -> pickled dict
`{image_id, image_h, image_w, num_boxes, boxes [N,4], features [N,2048]}` (+ `cls_prob` [N,1601]);
key `b"keys"` -> pickled list of the ids. Arrays are numpy arrays, or base64 strings of float32
bytes as some of the original readers expect; both are accepted. Pickles are read with the
allow-list unpickler: anything but plain containers, scalars and numpy arrays is refused.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterator

import lmdb
import numpy as np
from tqdm import tqdm

from vilbert.core.regions import ImageRegions
from vilbert.features.store import FeatureStoreWriter
from vilbert.io.safe_pickle import safe_loads

KEYS_KEY = b"keys"


def _array(value: Any, rows: int, name: str, where: str) -> np.ndarray:
    """A field as a float32 [rows, -1] array (numpy array, nested list, or base64 of float32)."""
    if isinstance(value, (bytes, str)):
        value = np.frombuffer(base64.b64decode(value), dtype=np.float32)
    array = np.asarray(value, dtype=np.float32)
    if array.size % max(rows, 1):
        raise ValueError(f"{where}: {name} has {array.size} values, not a multiple of num_boxes={rows}")
    return array.reshape(rows, -1)


def legacy_record(item: Any, key: str, where: str) -> ImageRegions:
    """One original record (an unpickled dict) -> ImageRegions."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: record {key!r} is a {type(item).__name__}, expected a dict")
    missing = [k for k in ("image_h", "image_w", "boxes", "features") if k not in item]
    if missing:
        raise ValueError(f"{where}: record {key!r} lacks {missing}")
    features = item["features"]
    rows = int(item.get("num_boxes", len(features) if not isinstance(features, (bytes, str)) else 0))
    boxes = _array(item["boxes"], rows, "boxes", where)
    if boxes.shape[1] != 4:
        raise ValueError(f"{where}: record {key!r} has boxes of width {boxes.shape[1]}, expected 4")
    cls_prob = item.get("cls_prob")
    return ImageRegions(
        image_id=key, width=int(item["image_w"]), height=int(item["image_h"]), boxes=boxes,
        features=_array(features, rows, "features", where),
        cls_prob=None if cls_prob is None else _array(cls_prob, rows, "cls_prob", where),
    )


def _key_text(key: Any) -> str:
    return key.decode("utf-8") if isinstance(key, bytes) else str(key)


def iter_legacy(path: str | Path) -> Iterator[ImageRegions]:
    """Yield every image of an original LMDB, in the order of its `keys` list."""
    path = Path(path)
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=path.is_dir())
    try:
        with env.begin() as txn:
            raw_keys = txn.get(KEYS_KEY)
            if raw_keys is None:
                raise ValueError(f"{path}: no {KEYS_KEY!r} entry; not an original ViLBERT feature LMDB")
            keys = safe_loads(raw_keys, f"{path}[keys]")
            for key in keys:
                text = _key_text(key)
                raw = txn.get(text.encode("utf-8"))
                if raw is None:
                    raise ValueError(f"{path}: id {text!r} is listed in 'keys' but has no record")
                yield legacy_record(safe_loads(raw, f"{path}[{text}]"), text, str(path))
    finally:
        env.close()


def import_legacy(path: str | Path, out: str | Path, fp16: bool = False, batch: int = 256,
                  progress: bool = True) -> int:
    """Copy an original LMDB into our store at `out`; ids already there are skipped. Returns the count written."""
    written = 0
    writer: FeatureStoreWriter | None = None
    pending: list[ImageRegions] = []
    try:
        for regions in tqdm(iter_legacy(path), unit="img", desc=f"import {Path(path).name}", disable=not progress):
            if writer is None:  # dims come from the first record
                writer = FeatureStoreWriter(out, {
                    "backbone": f"legacy:{Path(path).name}",
                    "feature_dim": int(regions.features.shape[1]),
                    "num_classes": 0 if regions.cls_prob is None else int(regions.cls_prob.shape[1]),
                    "dtype": "float16" if fp16 else "float32",
                    "imported_from": str(Path(path).resolve()),
                })
                done = writer.existing_ids()
            if regions.image_id in done:
                continue
            pending.append(regions)
            if len(pending) >= batch:
                written += writer.put_many(pending)
                pending = []
        if pending and writer is not None:
            written += writer.put_many(pending)
    finally:
        if writer is not None:
            writer.close()
    return written
