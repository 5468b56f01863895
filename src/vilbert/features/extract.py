"""Images -> boxes -> backbone feature map -> RoIAlign -> one vector and one class distribution
per region -> the feature store.

Each image is resized (aspect kept) so its longer side is `image_size` and placed at the top-left
of a fixed `image_size x image_size` canvas filled with the normalisation mean (zero after
normalisation, like the network's own SAME padding). The canvas does not depend on the other
images of the batch, so neither do an image's features.

A region's vector is the mean of its RoIAlign bins on the final 1280-channel map (the input the
ImageNet classifier expects); `cls_prob` is that classifier's softmax on the vector.

Jobs resume and record failures as `vilbert.features.fill` does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from vilbert.core.regions import ImageRegions
from vilbert.features.backbone import COLOUR_CHANNELS, COLOUR_SCALE, IMAGENET_MEAN, Backbone, load_backbone
from vilbert.features.boxes import ImageEntry, check_detections, clip_boxes, clip_given_boxes, grid_boxes, select_boxes
from vilbert.features.fill import ExtractReport, fill_store, read_rgb
from vilbert.features.roi_align import roi_align_pooled

DetectorFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class ExtractConfig:
    backbone: str = "efficientnet-lite0"
    image_size: int = 384  # canvas side; the longer image side is resized to it (multiple of 32)
    output_stride: int = 32  # 16: a twice finer feature map (atrous last stage), ~2x the compute
    batch_size: int = 8
    min_boxes: int = 10  # grid/detector boxes only; annotation boxes are used as given
    max_boxes: int = 36
    iou_threshold: float = 0.3  # NMS on detector boxes
    score_threshold: float = 0.2  # detector boxes kept above it (at least min_boxes)
    grid_levels: tuple[int, ...] = (1, 2, 3, 4)
    roi_output_size: int = 7
    sampling_ratio: int = 2
    fp16_store: bool = False
    workers: int = 0
    # Also pool an early, stride-8 map and append it (40 more dims): the final features are nearly
    # colour-blind (see features.backbone.COLOUR_BLOCK).
    colour_features: bool = False
    colour_scale: float = COLOUR_SCALE  # what the early dims are multiplied by (features.backbone)

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 32:
            raise ValueError(f"image_size {self.image_size} must be a positive multiple of 32 (the backbone's stride)")
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {self.min_boxes} and {self.max_boxes}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Prepared:
    """One decoded image on its canvas, with boxes in original pixels."""

    image_id: str
    canvas: torch.Tensor  # [3,S,S] uint8
    scale: tuple[float, float]  # canvas pixels per image pixel (x, y)
    width: int
    height: int
    boxes: np.ndarray  # [N,4] float32


class Letterbox:
    """Decode, choose boxes, letterbox onto the canvas (runs in DataLoader workers)."""

    def __init__(self, config: ExtractConfig, detector: DetectorFn | None, detector_name: str) -> None:
        self.config = config
        self.detector = detector
        self.detector_name = detector_name
        self.fill = tuple(round(m * 255) for m in IMAGENET_MEAN)

    def __call__(self, entry: ImageEntry) -> Prepared:
        return self.prepare(entry, read_rgb(entry))

    def prepare(self, entry: ImageEntry, img: Image.Image) -> Prepared:
        """An RGB image already decoded (its entry says where its boxes come from)."""
        width, height = img.size
        boxes = self._boxes(entry, img, width, height)
        side = self.config.image_size
        scale = side / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = Image.new("RGB", (side, side), self.fill)
        canvas.paste(img.resize((new_w, new_h), Image.BILINEAR), (0, 0))
        pixels = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)  # [H,W,3] -> [3,S,S]
        return Prepared(entry.image_id, pixels, (new_w / width, new_h / height), width, height, boxes)

    def _boxes(self, entry: ImageEntry, img: Image.Image, width: int, height: int) -> np.ndarray:
        cfg = self.config
        if entry.boxes is not None:
            if len(entry.boxes) == 0:
                raise ValueError("the boxes file lists no boxes for this image")
            return clip_given_boxes(entry.boxes, width, height)
        if self.detector is None:
            return grid_boxes(width, height, cfg.grid_levels)[: cfg.max_boxes]
        boxes, scores = self.detector(np.asarray(img))
        boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
        check_detections(self.detector_name, entry.image_id, boxes, scores)
        boxes = clip_boxes(boxes, width, height)
        keep = select_boxes(boxes, scores, cfg.min_boxes, cfg.max_boxes, cfg.iou_threshold, cfg.score_threshold)
        return boxes[keep]


@torch.inference_mode()
def regions_for_batch(backbone: Backbone, items: Sequence[Prepared], config: ExtractConfig) -> list[ImageRegions]:
    """Features and cls_prob of every region of a batch of prepared images."""
    pixels = torch.stack([p.canvas for p in items]).float().div_(255.0)  # [B,3,S,S]
    if config.colour_features:
        fmap, early = backbone.with_colour(pixels)  # [B,1280,S/32,S/32], [B,40,S/8,S/8]
    else:
        fmap, early = backbone(pixels), None  # [B,1280,S/32,S/32]
    canvas_boxes = [
        torch.from_numpy(p.boxes * np.array([*p.scale, *p.scale], dtype=np.float32)) for p in items
    ]
    size = config.roi_output_size

    def pooled(feature_map: torch.Tensor) -> torch.Tensor:
        # The mean of the RoIAlign bins, computed as one weight map per box (same numbers, far cheaper).
        return roi_align_pooled(feature_map, canvas_boxes, (size, size), feature_map.shape[-1] / config.image_size,
                                config.sampling_ratio)  # [K,C]

    vectors = pooled(fmap)  # [K,1280]
    cls_prob = backbone.classify(vectors)  # [K,1000], the ImageNet head on the final features
    if early is not None:
        vectors = torch.cat([vectors, pooled(early) * config.colour_scale], dim=1)  # [K,1280+40]
    out, start = [], 0
    for p in items:
        n = len(p.boxes)
        out.append(ImageRegions(
            p.image_id, p.width, p.height, p.boxes.astype(np.float32),
            vectors[start : start + n].float().numpy(), cls_prob[start : start + n].float().numpy(),
        ))
        start += n
    return out


def store_meta(backbone: Backbone, config: ExtractConfig, boxes_source: str) -> dict[str, Any]:
    info = backbone.info
    return {
        "backbone": info.name,
        "weights_sha256": info.weights_sha256,
        "feature_dim": info.feature_dim + (COLOUR_CHANNELS if config.colour_features else 0),
        "num_classes": info.num_classes,
        "dtype": "float16" if config.fp16_store else "float32",
        "image_size": config.image_size,
        "stride": info.stride,
        "boxes": boxes_source,
        "extract": {k: v for k, v in asdict(config).items() if k not in ("batch_size", "workers", "fp16_store")},
    }


def extract_features(
    entries: Sequence[ImageEntry],
    out: str | Path,
    config: ExtractConfig | None = None,
    *,
    boxes_source: str = "grid",
    detector: DetectorFn | None = None,
    backbone: Backbone | None = None,
    progress: bool = True,
) -> ExtractReport:
    """Extract every entry not yet in the store at `out`; see the module docstring."""
    config = config or ExtractConfig()
    backbone = backbone or load_backbone(config.backbone, output_stride=config.output_stride)
    if backbone.info.stride != config.output_stride:
        raise ValueError(f"backbone has output stride {backbone.info.stride}, config asks {config.output_stride}")
    prepare = Letterbox(config, detector, boxes_source)
    return fill_store(entries, out, store_meta(backbone, config, boxes_source), prepare,
                      lambda items: regions_for_batch(backbone, items, config), config.batch_size, config.workers,
                      progress)
