"""Where regions come from: an annotation file, a multi-scale grid, or a detector.

- COCO-style annotations (`--boxes FILE`): `{"images": [{id, file_name, width, height}],
  "annotations": [{image_id, bbox: [x, y, w, h], score?}]}`. These boxes are used as given (only
  clipped to the image), in descending score order; no NMS and no count limits apply, because
  whoever chose them (e.g. the generated world's proposals) already chose 10-36 on purpose.
- VCR's own boxes (`--vcr-boxes train.jsonl ...`): each image's `metadata_fn` boxes in object
  order, as given (the objects that VCR's texts refer to by index).
- A multi-scale grid (the default without boxes): the whole image plus 2x2, 3x3 and 4x4 tilings
  (30 boxes), capped at `max_boxes`.
- A detector (`--detector module:function` or a `.onnx` file): it returns boxes and scores; we
  apply NMS and keep boxes scoring >= `score_threshold`, at least `min_boxes` and at most
  `max_boxes` (10 and 36 by default, as in the paper's bottom-up features).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vilbert.data.readers.common import (
    FormatError,
    id_field,
    load_json,
    number,
    require,
    text_field,
    whole_field,
    xywh_box,
)
from vilbert.data.readers.vcr import load_metadata, read_vcr


@dataclass
class ImageEntry:
    """One image to extract: where it is and, if known, its boxes."""

    image_id: str
    path: Path
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray | None = None  # [N,4] float32 pixels x1y1x2y2, or None (grid/detector)
    scores: np.ndarray | None = field(default=None, repr=False)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def images_in_folder(folder: str | Path) -> list[ImageEntry]:
    """Every image file directly under `folder`; the id is the file name without its suffix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    entries = [ImageEntry(p.stem, p) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.image_id in seen:
            raise ValueError(f"two images share the id {entry.image_id!r}: {seen[entry.image_id]} and {entry.path}")
        seen[entry.image_id] = entry.path
    return entries


def read_coco_boxes(path: str | Path, images_dir: str | Path) -> list[ImageEntry]:
    """Images and their boxes from a COCO-style file, in the file's image order."""
    path = Path(path)
    data = load_json(path)
    require(data, ("images",), path, "the top level")
    images, annotations = data["images"], data.get("annotations", [])
    for key, value in (("images", images), ("annotations", annotations)):
        if not isinstance(value, list):
            raise FormatError(f"{path}: {key!r} must be a list, got a {type(value).__name__}")
    per_image: dict[str, list[tuple[float, list[float]]]] = {}
    for k, ann in enumerate(annotations):
        where = f"annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        require(ann, ("image_id", "bbox"), path, where)
        image_id = str(id_field(ann, "image_id", path, where))
        x, y, w, h = xywh_box(ann["bbox"], path, f"{where} of image {image_id}")
        score = number(ann["score"], path, f"{where} score") if "score" in ann else 1.0
        per_image.setdefault(image_id, []).append((score, [x, y, x + w, y + h]))
    entries, seen = [], set()
    for k, image in enumerate(images):
        require(image, ("id", "file_name"), path, f"image {k}")
        image_id = str(id_field(image, "id", path, f"image {k}"))
        if image_id in seen:
            raise FormatError(f"{path}: image {k}: id {image_id!r} is listed twice")
        seen.add(image_id)
        file_name = text_field(image, "file_name", path, f"image {image_id}")
        size = [whole_field(image, key, path, f"image {image_id}", minimum=1) if image.get(key) is not None else None
                for key in ("width", "height")]
        boxes = per_image.pop(image_id, [])
        # An image without boxes stays in the list with [0,4] boxes: extraction records it in
        # failures.jsonl and goes on with the others instead of stopping the whole job.
        boxes.sort(key=lambda item: -item[0])  # stable: ties keep the file's order
        entries.append(ImageEntry(
            image_id, Path(images_dir) / file_name, size[0], size[1],
            np.array([b for _, b in boxes], dtype=np.float32).reshape(-1, 4),
            np.array([s for s, _ in boxes], dtype=np.float32),
        ))
    if per_image:
        raise FormatError(f"{path}: annotations name images not listed in 'images': {sorted(per_image)[:5]}")
    return entries


def read_vcr_boxes(vcr_files: list[str | Path], images_dir: str | Path) -> list[ImageEntry]:
    """VCR's own boxes: for each image its items name (`img_fn` under `images_dir`), the boxes of
    its `metadata_fn` JSON in object order, so that region k + 1 of the store (after [IMG]) is
    `objects[k]` of the items, the boxes the original code extracted its VCR features from."""
    entries: dict[str, ImageEntry] = {}
    for vcr_file in vcr_files:
        for example in read_vcr(vcr_file):
            if example.image_id in entries:
                continue
            meta = load_metadata(vcr_file, example, images_dir)
            rows = meta["boxes"]  # checked by load_metadata: [x1, y1, x2, y2(, score)] with area
            boxes = np.array([r[:4] for r in rows], dtype=np.float32).reshape(-1, 4)
            scores = np.array([r[4] if len(r) == 5 else 1.0 for r in rows], dtype=np.float32)
            entries[example.image_id] = ImageEntry(
                example.image_id, Path(images_dir) / example.img_fn, meta.get("width"), meta.get("height"),
                boxes, scores)
    return list(entries.values())


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip [N,4] x1y1x2y2 boxes to the image."""
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def clip_given_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip a boxes file's boxes to the image; a box that is not finite, or that lies outside the
    image (nothing left after clipping), is an error naming it: a region of nothing would be
    stored as if it were one."""
    boxes = np.asarray(boxes, dtype=np.float32)
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"box {k} {boxes[k].tolist()} is not finite")
    out = clip_boxes(boxes, width, height)
    empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    if empty.any():
        k = int(np.argmax(empty))
        raise ValueError(f"box {k} {boxes[k].tolist()} (x1, y1, x2, y2) lies outside the {width}x{height} image")
    return out


def grid_boxes(width: int, height: int, levels: tuple[int, ...] = (1, 2, 3, 4)) -> np.ndarray:
    """A multi-scale grid: for each level k, the image tiled k x k (coarse levels first)."""
    boxes = []
    for k in levels:
        xs = np.linspace(0, width, k + 1)
        ys = np.linspace(0, height, k + 1)
        boxes += [[xs[i], ys[j], xs[i + 1], ys[j + 1]] for j in range(k) for i in range(k)]
    return np.array(boxes, dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [N,4] and [M,4] x1y1x2y2 boxes -> [N,M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(min=0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes, boxes)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return np.array(keep, dtype=np.int64)


def select_boxes(
    boxes: np.ndarray, scores: np.ndarray, min_boxes: int = 10, max_boxes: int = 36,
    iou_threshold: float = 0.3, score_threshold: float = 0.2,
) -> np.ndarray:
    """Indices of the boxes to keep: NMS, then scores >= threshold, padded up to `min_boxes` with
    the best remaining NMS survivors (then the best suppressed boxes), capped at `max_boxes`."""
    if min_boxes > max_boxes:
        raise ValueError(f"min_boxes {min_boxes} > max_boxes {max_boxes}")
    kept = nms(boxes, scores, iou_threshold)
    confident = [i for i in kept if scores[i] >= score_threshold]
    if len(confident) < min_boxes:
        kept_set = set(kept.tolist())
        rest = [i for i in kept if scores[i] < score_threshold]
        rest += [i for i in np.argsort(-scores, kind="stable") if i not in kept_set]
        confident += rest[: min_boxes - len(confident)]
    return np.array(confident[:max_boxes], dtype=np.int64)


class OnnxDetector:
    """Runs an ONNX model with onnxruntime.

    Contract: one input, float32 [1,3,H,W] RGB in [0,1]; the first two outputs are boxes [N,4]
    (or [1,N,4]) in input pixels x1y1x2y2 and scores [N] (or [1,N]).
    """

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("ONNX detectors need onnxruntime: pip install onnxruntime") from err
        self.path = Path(path)
        self._session = self._make_session()  # fail early on a bad file, in the parent

    def _make_session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        if len(session.get_outputs()) < 2:
            raise ValueError(f"ONNX detector {self.path} must have two outputs (boxes, scores)")
        return session

    def __getstate__(self) -> dict:
        # Sessions do not pickle; a DataLoader worker builds its own.
        return {"path": self.path, "_session": None}

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._session is None:
            self._session = self._make_session()
        session = self._session
        pixels = np.ascontiguousarray((image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])  # [1,3,H,W]
        boxes, scores = session.run(None, {session.get_inputs()[0].name: pixels})[:2]
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1)


def load_detector(spec: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A detector from "package.module:function" or a path to a .onnx file."""
    if spec.endswith(".onnx"):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"ONNX detector {spec} does not exist")
        return OnnxDetector(spec)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"detector {spec!r} must be 'module:function' or a path ending in .onnx")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load detector {spec!r}: {err}") from err
    if not callable(target):
        raise ValueError(f"detector {spec!r} is not callable")
    return target


def check_detections(spec: str, image_id: str, boxes: np.ndarray, scores: np.ndarray) -> None:
    """A detector's output must be boxes [N,4] and scores [N] with N >= 1."""
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"detector {spec} returned boxes or scores that are not finite for image {image_id}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],) or len(boxes) == 0:
        raise ValueError(
            f"detector {spec} returned boxes {boxes.shape} and scores {scores.shape} for image {image_id}; "
            "expected [N,4] and [N] with N >= 1"
        )
