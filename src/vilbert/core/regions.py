"""One image's regions as stored, and a batch of them as the visual stream takes them: the [IMG]
row, 5-d locations, padding.

Row 0 of every image is [IMG]: the mean of its real region features, at location [0,0,1,1,1].
A region's location is [x1/W, y1/H, x2/W, y2/H, w*h/(W*H)], as in the original. Images are padded to
the batch's largest region count; `mask` is 1 on real rows ([IMG] included), 0 on padding.

Dimension letters: B images, N real regions of one image, R rows per image after padding ([IMG]
included), D feature width, C classes of `cls_prob`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

IMG_LOCATION = (0.0, 0.0, 1.0, 1.0, 1.0)


@dataclass
class ImageRegions:
    """The regions of one image, as a feature store holds them."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray  # [N,4] float32, pixels x1,y1,x2,y2
    features: np.ndarray  # [N,D] float32
    cls_prob: np.ndarray | None = None  # [N,C] float32, the backbone's class distribution per region
    # What a detector said of each region (None for annotation or grid boxes): its confidence, its
    # class and its attribute, as ids into the store's `objects_vocab` / `attributes_vocab`.
    scores: np.ndarray | None = None  # [N] float32
    objects: np.ndarray | None = None  # [N] int32
    attributes: np.ndarray | None = None  # [N] int32

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(
                f"image {self.image_id!r}: boxes {self.boxes.shape} and features {self.features.shape} "
                "must be [N,4] and [N,D]"
            )
        if self.cls_prob is not None and (self.cls_prob.ndim != 2 or self.cls_prob.shape[0] != n):
            raise ValueError(f"image {self.image_id!r}: cls_prob {self.cls_prob.shape} must be [{n},C]")
        for name in ("scores", "objects", "attributes"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n,):
                raise ValueError(f"image {self.image_id!r}: {name} {np.shape(value)} must be [{n}]")

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class RegionBatch:
    """A batch's visual-stream inputs; unpacks as `features, locations, mask = ...`."""

    features: torch.Tensor  # [B, R, D] float32
    locations: torch.Tensor  # [B, R, 5] float32
    mask: torch.Tensor  # [B, R] long, 1 = real row ([IMG] included)
    cls_prob: torch.Tensor | None = None  # [B, R, C] float32 (zeros on padding), None if absent
    num_boxes: torch.Tensor | None = None  # [B] long, real rows per image ([IMG] included)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.features, self.locations, self.mask))


def box_locations(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """boxes [N,4] pixels x1y1x2y2 -> [N,5] = [x1/W, y1/H, x2/W, y2/H, w*h/(W*H)]."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width} height={height}")
    boxes = np.asarray(boxes, dtype=np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (float(width) * float(height))
    scale = np.array([width, height, width, height], dtype=np.float32)
    return np.concatenate([boxes / scale, area[:, None]], axis=1).astype(np.float32)


def _rows(regions: ImageRegions, max_regions: int | None) -> int:
    n = regions.num_boxes
    return n if max_regions is None else min(n, max_regions)


def _fill(regions: ImageRegions, n: int, features: np.ndarray, locations: np.ndarray,
          cls_prob: np.ndarray | None) -> None:
    """Write [IMG] + the first n regions into preallocated rows (features [>=n+1, D] etc.)."""
    if n == 0:
        raise ValueError(f"image {regions.image_id!r} has no regions; [IMG] is the mean of at least one")
    features[1 : n + 1] = regions.features[:n]
    features[0] = regions.features[:n].mean(axis=0)
    locations[0] = IMG_LOCATION
    locations[1 : n + 1] = box_locations(regions.boxes[:n], regions.width, regions.height)
    if cls_prob is not None and regions.cls_prob is not None:
        cls_prob[1 : n + 1] = regions.cls_prob[:n]
        cls_prob[0] = regions.cls_prob[:n].mean(axis=0)


def collate_regions(items: Sequence[ImageRegions], max_regions: int | None = None) -> RegionBatch:
    """Pad a list of images' regions to the batch's largest count (+1 for [IMG]).

    `cls_prob` is returned only if every image has it.
    """
    if not items:
        raise ValueError("collate_regions needs at least one image")
    dims = {r.features.shape[1] for r in items}
    if len(dims) != 1:
        raise ValueError(f"images in one batch have different feature widths {sorted(dims)}")
    counts = [_rows(r, max_regions) for r in items]
    rows = max(counts) + 1
    with_cls = all(r.cls_prob is not None for r in items)
    features = np.zeros((len(items), rows, dims.pop()), dtype=np.float32)
    locations = np.zeros((len(items), rows, 5), dtype=np.float32)
    mask = np.zeros((len(items), rows), dtype=np.int64)
    cls_prob = np.zeros((len(items), rows, items[0].cls_prob.shape[1]), dtype=np.float32) if with_cls else None
    for b, (regions, n) in enumerate(zip(items, counts)):
        _fill(regions, n, features[b], locations[b], None if cls_prob is None else cls_prob[b])
        mask[b, : n + 1] = 1
    return RegionBatch(
        torch.from_numpy(features), torch.from_numpy(locations), torch.from_numpy(mask),
        None if cls_prob is None else torch.from_numpy(cls_prob),
        torch.tensor([n + 1 for n in counts], dtype=torch.long),
    )
