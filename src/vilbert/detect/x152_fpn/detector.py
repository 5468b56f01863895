"""The ResNeXt-152 32x8d FPN Faster R-CNN of vqa-maskrcnn-benchmark as one module, with the two
extraction modes of vilbert-multi-task's scripts.

Legend: N images, R regions of an image, D feature width (fc6), K classes incl. background.

`detect` is `script/extract_features.py`: RPN proposals are scored by the box head, each
proposal keeps its best class score that survives per-class NMS, the `num_features` best
proposals are returned with their fc6 features (the proposals' own boxes: the per-class box
regression is not applied). `features_for_boxes` is `script/extract_features_from_gt.py`:
the given boxes replace the proposals and every box is returned.

Kept from the vqa fork on purpose: every image of a batch is treated as having the padded
canvas size (its `to_image_list` records padded sizes). Proposals are clipped to the canvas,
so they may extend over the padding, and given boxes are scaled to the canvas by
canvas/original per axis (not by the resize scale), as the fork's BoxList.resize does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vilbert.detect.x152_fpn.backbone import Backbone
from vilbert.detect.x152_fpn.box_head import BoxHead
from vilbert.detect.x152_fpn.config import X152FPNConfig
from vilbert.detect.x152_fpn.preprocess import ImageBatch, ImageInput, load_rgb, preprocess
from vilbert.detect.x152_fpn.rpn import RPN
from vilbert.detect.x152_fpn.selection import select_boxes

Tensor = torch.Tensor


@dataclass
class Detections:
    """One image's regions, boxes in original image pixels (x1, y1, x2, y2)."""

    boxes: Tensor  # [R, 4]
    scores: Tensor  # [R] selection score (detect) / best object-class probability (given boxes)
    features: Tensor  # [R, D] fc6 after ReLU
    cls_prob: Tensor  # [R, K] softmax over all classes, background (column 0) included
    objects: Tensor  # [R] int64 argmax over the object classes, 0-based (a cls_prob column - 1; with
    # include_background the column itself)
    width: int
    height: int
    num_boxes: int  # regions with a non-zero score (detect), R (given boxes)


@dataclass
class RegionOutputs:
    """What the network computes for a batch, per image: boxes in canvas pixels, fc6, logits."""

    boxes: list[Tensor]
    features: list[Tensor]
    logits: list[Tensor]


class X152FPN(nn.Module):
    """Backbone (`backbone`), RPN (`rpn`) and box head (`roi_heads.box`), named as in
    maskrcnn-benchmark so that `detectron_model.pth` loads by an identity key map."""

    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.rpn = RPN(config)
        self.roi_heads = nn.ModuleDict({"box": BoxHead(config)})

    @property
    def _param(self) -> Tensor:
        return self.rpn.head.conv.weight

    # -- pieces --------------------------------------------------------------------------

    def preprocess(self, images: Sequence[ImageInput]) -> ImageBatch:
        """Images (paths, PIL images, uint8 arrays) -> padded BGR batch on the model's device."""
        c = self.config
        arrays = [load_rgb(im, f"image {i}") for i, im in enumerate(images)]
        return preprocess(
            arrays, c.pixel_mean, c.min_size, c.max_size, c.size_divisible, self._param.dtype, self._param.device
        )

    @torch.no_grad()
    def run_batch(
        self, batch: ImageBatch, boxes: list[Tensor] | None = None, amp_dtype: torch.dtype | None = None
    ) -> RegionOutputs:
        """Network pass: given `boxes` (per image, canvas pixels) or RPN proposals -> RegionOutputs.

        With `amp_dtype` (off CPU only) the convolutions and linear layers run under autocast;
        box decoding, NMS, RoIAlign and the outputs stay in the model's dtype."""
        dtype, device = self._param.dtype, self._param.device
        use_amp = amp_dtype is not None and device.type != "cpu"
        with torch.autocast(device.type, dtype=amp_dtype or torch.float16, enabled=use_amp):
            features = [f.to(dtype) for f in self.backbone(batch.tensor.to(device))]
            if boxes is None:
                boxes = self.rpn(features, batch.canvas)
            boxes = [b.to(device=device, dtype=dtype) for b in boxes]
            fc6, logits = self.roi_heads["box"](features, boxes)
        sizes = [len(b) for b in boxes]
        return RegionOutputs(boxes, list(fc6.to(dtype).split(sizes)), list(logits.to(dtype).split(sizes)))

    def _batches(self, n: int, batch_size: int | None) -> list[range]:
        size = batch_size or self.config.batch_size
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        return [range(s, min(s + size, n)) for s in range(0, n, size)]

    # -- the two extraction modes ----------------------------------------------------------

    @torch.no_grad()
    def detect(
        self,
        images: Sequence[ImageInput],
        batch_size: int | None = None,
        amp_dtype: torch.dtype | None = None,
        method: str = "fast",
    ) -> list[Detections]:
        """extract_features.py: the `num_features` best proposals of each image.

        images: paths, PIL images or uint8 RGB arrays [H, W, 3] (grey [H, W] allowed);
        batch_size: images padded together (default config.batch_size, the script's 2);
        amp_dtype: torch.float16 / bfloat16 autocast for the network off CPU;
        method: "fast" or "plain" selection (equal results; "plain" is the script's loop)."""
        c = self.config
        out: list[Detections] = []
        for idx in self._batches(len(images), batch_size):
            batch = self.preprocess([images[i] for i in idx])
            regions = self.run_batch(batch, amp_dtype=amp_dtype)
            for i in range(len(idx)):
                scale, (h, w) = batch.scales[i], batch.sizes[i]
                boxes = regions.boxes[i] / scale
                probs = torch.softmax(regions.logits[i], dim=-1)
                keep, scores, num_boxes = select_boxes(
                    boxes, probs, c.num_features, c.nms_threshold, c.confidence_threshold, c.include_background, method
                )
                out.append(
                    self._detections(boxes[keep], scores, regions.features[i][keep], probs[keep], w, h, num_boxes)
                )
        return out

    @torch.no_grad()
    def features_for_boxes(
        self,
        images: Sequence[ImageInput],
        boxes: Sequence[Any],
        batch_size: int | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> list[Detections]:
        """extract_features_from_gt.py: features of given boxes [R_i, 4] (x1, y1, x2, y2, original
        pixels; tensors or arrays), every box returned in the given order."""
        if len(boxes) != len(images):
            raise ValueError(f"features_for_boxes got {len(images)} images but {len(boxes)} box sets")
        dtype = self._param.dtype
        given = []
        for i, b in enumerate(boxes):
            t = torch.as_tensor(b).to(dtype)
            if t.numel() == 0:
                t = t.reshape(0, 4)
            if t.dim() != 2 or t.shape[1] != 4 or not torch.isfinite(t).all():
                raise ValueError(
                    f"boxes of image {i}: expected finite [R, 4] (x1, y1, x2, y2), got shape {tuple(t.shape)}"
                )
            given.append(t)
        out: list[Detections] = []
        start = 0 if self.config.include_background else 1
        for idx in self._batches(len(images), batch_size):
            batch = self.preprocess([images[i] for i in idx])
            hp, wp = batch.canvas
            canvas_boxes = [
                _scale_boxes(given[i], wp / batch.sizes[j][1], hp / batch.sizes[j][0]) for j, i in enumerate(idx)
            ]
            regions = self.run_batch(batch, canvas_boxes, amp_dtype=amp_dtype)
            for j in range(len(idx)):
                h, w = batch.sizes[j]
                back = _scale_boxes(regions.boxes[j], w / wp, h / hp)
                probs = torch.softmax(regions.logits[j], dim=-1)
                scores = probs[:, start:].max(dim=1).values if len(probs) else probs.new_zeros(0)
                out.append(self._detections(back, scores, regions.features[j], probs, w, h, len(back)))
        return out

    def _detections(
        self, boxes: Tensor, scores: Tensor, features: Tensor, probs: Tensor, width: int, height: int, num_boxes: int
    ) -> Detections:
        start = 0 if self.config.include_background else 1
        objects = (
            probs[:, start:].argmax(dim=1) if len(probs) else torch.zeros(0, dtype=torch.int64, device=probs.device)
        )
        return Detections(
            boxes=boxes.cpu(),
            scores=scores.cpu(),
            features=features.cpu(),
            cls_prob=probs.cpu(),
            objects=objects.cpu(),
            width=int(width),
            height=int(height),
            num_boxes=int(num_boxes),
        )


def _scale_boxes(boxes: Tensor, ratio_w: float, ratio_h: float) -> Tensor:
    """maskrcnn-benchmark's BoxList.resize: one multiply when both ratios are equal."""
    if ratio_w == ratio_h:
        return boxes * ratio_w
    return torch.stack(
        [boxes[:, 0] * ratio_w, boxes[:, 1] * ratio_h, boxes[:, 2] * ratio_w, boxes[:, 3] * ratio_h], dim=1
    )


def build_x152_fpn(config: X152FPNConfig | None = None, device: Any = None) -> X152FPN:
    """The detector (eval mode) at `config` (default: the full-size released architecture)."""
    model = X152FPN(config or X152FPNConfig())
    if device is not None:
        model = model.to(device)
    return model.eval()
