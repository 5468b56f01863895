"""A released checkpoint's detector -> the feature store: its boxes, 2048-d features, class
distribution, classes and attributes per region, as the original extraction scripts computed them.

Decoding runs in DataLoader workers, the detector here (on its device); jobs resume and record
failures as `vilbert.features.fill` does. With a boxes file, a detector that can (x152-fpn)
computes the features of those boxes instead of choosing its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vilbert.core.regions import ImageRegions
from vilbert.detect import Detections, Detector
from vilbert.features.boxes import ImageEntry, clip_given_boxes
from vilbert.features.fill import ExtractReport, fill_store, read_rgb


@dataclass
class Decoded:
    image_id: str
    pixels: np.ndarray  # [H,W,3] uint8 RGB
    boxes: np.ndarray | None  # [N,4] given boxes, clipped to the image, or None


class _Decode:
    """Runs in workers: the image as RGB (EXIF applied), its given boxes checked."""

    def __init__(self, given_boxes: bool) -> None:
        self.given_boxes = given_boxes

    def __call__(self, entry: ImageEntry) -> Decoded:
        img = read_rgb(entry)
        boxes = None
        if self.given_boxes:
            if entry.boxes is None or len(entry.boxes) == 0:
                raise ValueError("the boxes file lists no boxes for this image")
            boxes = clip_given_boxes(entry.boxes, *img.size)
        return Decoded(entry.image_id, np.asarray(img), boxes)


def to_regions(image_id: str, d: Detections) -> ImageRegions:
    return ImageRegions(image_id, d.width, d.height, d.boxes, d.features, d.cls_prob, scores=d.scores,
                        objects=d.objects, attributes=d.attributes)


def detector_meta(detector: Detector, boxes_source: str, fp16_store: bool) -> dict[str, Any]:
    return {
        "backbone": detector.name,
        "feature_dim": detector.feature_dim,
        "num_classes": detector.num_classes,
        "dtype": "float16" if fp16_store else "float32",
        "boxes": boxes_source,
        "objects_vocab": detector.objects_vocab,
        "attributes_vocab": detector.attributes_vocab,
        **detector.settings(),
    }


def extract_detected(entries: Sequence[ImageEntry], out: str | Path, detector: Detector, *, given_boxes: bool = False,
                     boxes_source: str = "detector", fp16_store: bool = False, workers: int = 0,
                     progress: bool = True) -> ExtractReport:
    """Every entry the store at `out` lacks, through `detector`; see the module docstring."""
    if given_boxes and not detector.spec.given_boxes:
        detector.features_for_boxes([], [])  # raises, naming the detector

    def regions(batch: list[Decoded]) -> list[ImageRegions]:
        pixels = [d.pixels for d in batch]
        found = (detector.features_for_boxes(pixels, [d.boxes for d in batch]) if given_boxes
                 else detector.detect(pixels))
        return [to_regions(d.image_id, r) for d, r in zip(batch, found)]

    meta = detector_meta(detector, boxes_source, fp16_store)
    return fill_store(entries, out, meta, _Decode(given_boxes), regions, detector.batch_size, workers, progress)

