"""Import the original code's region-feature LMDBs into our store.

The original layout (SPEC section 4): key `str(image_id)` -> pickled dict
`{image_id, image_h, image_w, num_boxes, boxes [N,4], features [N,2048]}` (+ `cls_prob` [N,1601]);
key `b"keys"` -> pickled list of the ids. Arrays are numpy arrays, or base64 strings of float32
bytes as some of the original readers expect; both are accepted. Pickles are read with the
allow-list unpickler: anything but plain containers, scalars and numpy arrays is refused.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Iterator

import lmdb
import numpy as np
from tqdm import tqdm

from vilbert.core.regions import ImageRegions
from vilbert.features.store import FeatureStoreWriter
from vilbert.io.safe_pickle import safe_loads

KEYS_KEY = b"keys"


MAX_BOXES = 10_000  # far above any extraction's (36 or 100); a record claiming more is damaged


def _array(value: Any, rows: int, name: str, where: str) -> np.ndarray:
    """A field as a finite float32 [rows, -1] array (numpy array, nested list, or base64 of float32)."""
    try:
        if isinstance(value, (bytes, str)):
            value = np.frombuffer(base64.b64decode(value, validate=True), dtype=np.float32)
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError, binascii.Error) as err:
        raise ValueError(f"{where}: {name} is not an array of numbers ({type(err).__name__}: {err})") from err
    if rows == 0 or array.size == 0 or array.size % rows:
        raise ValueError(f"{where}: {name} has {array.size} values, not a positive multiple of num_boxes={rows}")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: {name} holds values that are not finite")
    return array.reshape(rows, -1)


def _whole(item: dict, name: str, where: str, low: int, high: int) -> int:
    value = item[name]
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where}: {name}={value!r:.40} is not a whole number in [{low}, {high}]")
    return value


def legacy_record(item: Any, key: str, where: str) -> ImageRegions:
    """One original record (an unpickled dict) -> ImageRegions; a field of the wrong type or size
    is an error naming the record and the field."""
    where = f"{where}: record {key!r}"
    if not isinstance(item, dict):
        raise ValueError(f"{where} is a {type(item).__name__}, expected a dict")
    missing = [k for k in ("image_h", "image_w", "boxes", "features") if k not in item]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    features = item["features"]
    if "num_boxes" in item:
        rows = _whole(item, "num_boxes", where, 1, MAX_BOXES)
    elif isinstance(features, (bytes, str)):
        raise ValueError(f"{where}: features are base64 but num_boxes is missing")
    else:
        rows = len(features) if hasattr(features, "__len__") else 0
    boxes = _array(item["boxes"], rows, "boxes", where)
    if boxes.shape[1] != 4:
        raise ValueError(f"{where} has boxes of width {boxes.shape[1]}, expected 4")
    cls_prob = item.get("cls_prob")
    return ImageRegions(
        image_id=key, width=_whole(item, "image_w", where, 1, 1 << 20), height=_whole(item, "image_h", where, 1, 1 << 20),
        boxes=boxes, features=_array(features, rows, "features", where),
        cls_prob=None if cls_prob is None else _array(cls_prob, rows, "cls_prob", where),
    )


def _key_text(key: Any) -> str:
    if isinstance(key, bytes):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"an id in 'keys' is not UTF-8 ({key[:20]!r}...)") from err
    if isinstance(key, bool) or not isinstance(key, (int, str, np.integer)):
        raise ValueError(f"an id in 'keys' is a {type(key).__name__}: {key!r:.40}")
    return str(key)


def iter_legacy(path: str | Path) -> Iterator[ImageRegions]:
    """Yield every image of an original LMDB, in the order of its `keys` list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such LMDB")
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=path.is_dir())
    except lmdb.Error as err:
        raise ValueError(f"{path}: not a readable LMDB ({err})") from err
    try:
        with env.begin() as txn:
            raw_keys = txn.get(KEYS_KEY)
            if raw_keys is None:
                raise ValueError(f"{path}: no {KEYS_KEY!r} entry; not an original ViLBERT feature LMDB")
            keys = safe_loads(raw_keys, f"{path}[keys]")
            if not isinstance(keys, (list, tuple)):
                raise ValueError(f"{path}[keys] is a {type(keys).__name__}, expected a list of ids")
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
