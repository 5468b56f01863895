"""Images -> regions, the way a model's training features were made: with the feature store's
extractor and settings (EfficientNet-Lite0 + RoIAlign, or the released detector it names), or a
released detector given directly. Backbone and detector are loaded once and reused for every call.

An image is a path, a PIL image, an RGB uint8 array [H,W,3] or stored regions (`ImageRegions`, e.g.
`FeatureStore(path)[image_id]`), which pass through unchanged.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from vilbert.core.regions import ImageRegions
from vilbert.detect import Detector, load_detector
from vilbert.features.backbone import load_backbone
from vilbert.features.boxes import ImageEntry, read_coco_boxes
from vilbert.features.detected import to_regions
from vilbert.features.extract import ExtractConfig, Letterbox, regions_for_batch
from vilbert.features.fill import to_rgb
from vilbert.features.store import FeatureStore

ImageInput = Union[str, Path, Image.Image, np.ndarray, ImageRegions]


def extract_config(features: str | Path | None, image_size: int | None) -> ExtractConfig:
    """ExtractConfig matching `features`' stored settings (when given), then `image_size`."""
    values: dict[str, Any] = {}
    if features is not None:
        stored = (FeatureStore(features).meta or {}).get("extract", {})
        known = {f.name for f in dataclasses.fields(ExtractConfig)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in known}
        if stored.get("colour_features") and "colour_scale" not in stored:
            values["colour_scale"] = 1.0  # a store written before the early dims were scaled
    if image_size is not None:
        values["image_size"] = image_size
    return ExtractConfig(**values, batch_size=1)


def detector_of_store(features: str | Path | None) -> dict[str, Any] | None:
    """The released detector a feature store was extracted with, as its metadata records it."""
    if features is None:
        return None
    meta = FeatureStore(features).meta
    if not meta.get("detector"):
        return None
    if not Path(meta["weights"]).is_file():
        raise FileNotFoundError(f"{features} was extracted with {meta['detector']} weights {meta['weights']}, which "
                                "are not there any more; give the detector and its weights")
    return {"name": meta["detector"], "weights": meta["weights"], "config": meta.get("detector_config")}


def boxes_from_file(image: str | Path, boxes_file: str | Path) -> np.ndarray:
    """The boxes a COCO-style file lists for `image` (its entry found by file name), [N,4] pixels."""
    image = Path(image)
    matches = [e for e in read_coco_boxes(boxes_file, image.parent) if e.path.name == image.name]
    if not matches:
        raise ValueError(f"{boxes_file} lists no image with file name {image.name!r}")
    return matches[0].boxes


def as_rgb(image: ImageInput, name: str) -> Image.Image:
    """An 8-bit RGB PIL image from a path (EXIF orientation applied), a PIL image or an array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            with Image.open(path) as img:
                out = to_rgb(ImageOps.exif_transpose(img))
                out.load()
                return out
        except OSError as err:
            raise ValueError(f"cannot decode the image {path}: {err}") from err
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name}: an image array must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        return Image.fromarray(image, "RGB")
    raise TypeError(f"{name}: expected a path, a PIL image, an RGB uint8 array or ImageRegions, "
                    f"got {type(image).__name__}")


class RegionSource:
    """Regions of images as a model's training features were made; see the module docstring."""

    def __init__(self, features: str | Path | None = None, detector: str | None = None,
                 detector_weights: str | Path | None = None, detector_config: Any = None,
                 image_size: int | None = None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        choice = ({"name": detector, "weights": detector_weights, "config": detector_config}
                  if detector is not None else detector_of_store(features))
        self.detector: Detector | None = None
        if choice is not None:
            if choice["weights"] is None:
                raise ValueError(f"the {choice['name']} detector needs its weights file")
            self.detector = load_detector(choice["name"], choice["weights"], choice["config"], self.device)
        else:
            self.config = extract_config(features, image_size)
            self.backbone = load_backbone(self.config.backbone, output_stride=self.config.output_stride)
            self.letterbox = Letterbox(self.config, None, "grid")

    def __call__(self, images: Sequence[ImageInput], boxes: Sequence[np.ndarray | None] | None = None
                 ) -> list[ImageRegions]:
        """Each image's regions; `boxes` (pixels x1y1x2y2 per image, None = the extractor's own)."""
        boxes = list(boxes) if boxes is not None else [None] * len(images)
        if len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} box sets")
        out: list[ImageRegions | None] = [im if isinstance(im, ImageRegions) else None for im in images]
        todo = [i for i, r in enumerate(out) if r is None]
        pictures = {i: as_rgb(images[i], f"image {i}") for i in todo}
        for i in todo:
            out[i] = self._one(str(i), pictures[i], boxes[i])
        return out  # type: ignore[return-value]

    def _one(self, image_id: str, img: Image.Image, boxes: np.ndarray | None) -> ImageRegions:
        if self.detector is not None:
            pixels = np.asarray(img)
            found = (self.detector.features_for_boxes([pixels], [np.asarray(boxes, np.float32)]) if boxes is not None
                     else self.detector.detect([pixels]))
            return to_regions(image_id, found[0])
        entry = ImageEntry(image_id, Path(image_id), boxes=None if boxes is None else np.asarray(boxes, np.float32))
        return regions_for_batch(self.backbone, [self.letterbox.prepare(entry, img)], self.config)[0]
