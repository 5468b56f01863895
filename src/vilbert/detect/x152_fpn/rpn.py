"""Region proposal network over the FPN levels (`rpn.head`, `rpn.anchor_generator`).

Legend: N images, C channels, A anchors a location, H x W a level's size, L levels,
R proposals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vilbert.detect.x152_fpn.config import X152FPNConfig
from vilbert.detect.x152_fpn.ops import cell_anchors, clip_boxes, decode_boxes, grid_anchors, nms

Tensor = torch.Tensor


class AnchorGenerator(nn.Module):
    """Holds each level's cell anchors as buffers `cell_anchors.{i}` (they are in the checkpoint)."""

    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.strides = config.anchor_strides
        self.cell_anchors = nn.Module()
        for i, (stride, size) in enumerate(zip(config.anchor_strides, config.anchor_sizes)):
            self.cell_anchors.register_buffer(str(i), cell_anchors(stride, size, config.anchor_aspect_ratios))

    def level_anchors(self, level: int, height: int, width: int) -> Tensor:
        return grid_anchors(getattr(self.cell_anchors, str(level)), self.strides[level], height, width)


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then objectness [N, A, H, W] and deltas [N, 4A, H, W] per level."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, kernel_size=1)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


class RPN(nn.Module):
    """Test-time proposals: per level top-k by objectness, decode, clip, NMS; then top-k per image."""

    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.config = config
        self.anchor_generator = AnchorGenerator(config)
        self.head = RPNHead(config.fpn_channels, config.num_anchors)

    def forward(self, features: list[Tensor], canvas: tuple[int, int]) -> list[Tensor]:
        """features: P2..P6; canvas (H, W): the padded input size, which the vqa fork uses as
        every image's size when clipping (its to_image_list records padded sizes).
        Returns per image proposals [R_i, 4] in input pixels, by decreasing objectness."""
        c = self.config
        logits, deltas = self.head(features)
        n = features[0].shape[0]
        per_image: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(n)]
        dtype = features[0].dtype  # the head may run under autocast; the box ops do not
        for level, (obj, reg) in enumerate(zip(logits, deltas)):
            obj, reg = obj.to(dtype), reg.to(dtype)
            _, a, h, w = obj.shape
            obj = obj.permute(0, 2, 3, 1).reshape(n, -1).sigmoid()  # [N, H*W*A]
            reg = reg.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)  # [N, H*W*A, 4]
            anchors = self.anchor_generator.level_anchors(level, h, w)
            k = min(c.rpn_pre_nms_top_n, obj.shape[1])
            obj, idx = obj.topk(k, dim=1, sorted=True)
            for i in range(n):
                boxes = decode_boxes(reg[i, idx[i]], anchors[idx[i]])
                boxes = clip_boxes(boxes, canvas[0], canvas[1])
                ws, hs = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
                big = torch.nonzero((ws >= c.rpn_min_size) & (hs >= c.rpn_min_size)).squeeze(1)
                boxes, scores = boxes[big], obj[i, big]
                keep = nms(boxes, scores, c.rpn_nms_threshold, max_keep=c.rpn_post_nms_top_n)
                per_image[i].append((boxes[keep], scores[keep]))
        proposals = []
        for levels in per_image:
            boxes = torch.cat([b for b, _ in levels])
            scores = torch.cat([s for _, s in levels])
            k = min(c.rpn_fpn_post_nms_top_n, len(scores))
            _, order = scores.topk(k, dim=0, sorted=True)
            proposals.append(boxes[order])
        return proposals
