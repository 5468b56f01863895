"""The FPN box head (`roi_heads.box`): multi-level RoIAlign -> fc6 -> fc7 -> class scores.

Legend: R regions, C FPN channels, P pooled size, D MLP width, K classes (incl. background).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vilbert.detect.x152_fpn.config import X152FPNConfig
from vilbert.detect.x152_fpn.ops import map_levels, roi_align

Tensor = torch.Tensor


class Pooler(nn.Module):
    """Assigns each box to one of P2..P5 by its size and RoIAligns it there."""

    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.scales = config.pooler_scales
        self.resolution = config.pooler_resolution
        self.sampling_ratio = config.pooler_sampling_ratio
        self.k_min = round(-math.log2(self.scales[0]))
        self.k_max = round(-math.log2(self.scales[-1]))

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """features: at least len(scales) levels; boxes: per image [R_i, 4] input pixels -> [R, C, P, P]."""
        concat = torch.cat(boxes).to(features[0].dtype)
        ids = torch.cat(
            [torch.full((len(b),), i, dtype=concat.dtype, device=concat.device) for i, b in enumerate(boxes)]
        )
        rois = torch.cat([ids[:, None], concat], dim=1)  # [R, 5]
        levels = map_levels(concat, self.k_min, self.k_max)
        out = features[0].new_zeros(len(rois), features[0].shape[1], self.resolution, self.resolution)
        for level, scale in enumerate(self.scales):
            idx = torch.nonzero(levels == level).squeeze(1)
            if len(idx):
                out[idx] = roi_align(features[level], rois[idx], self.resolution, scale, self.sampling_ratio)
        return out


class FeatureExtractor(nn.Module):
    """Pooled [R, C, P, P] -> fc6 (the region feature) and fc7, both after ReLU."""

    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.pooler = Pooler(config)
        in_features = config.fpn_channels * config.pooler_resolution**2
        self.fc6 = nn.Linear(in_features, config.mlp_dim)
        self.fc7 = nn.Linear(config.mlp_dim, config.mlp_dim)

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = self.pooler(features, boxes).flatten(1)  # [R, C*P*P]
        fc6 = F.relu(self.fc6(x))
        return fc6, F.relu(self.fc7(fc6))


class Predictor(nn.Module):
    """Class logits [R, K]; `bbox_pred` (per-class deltas) is in the checkpoint but the extraction
    keeps the proposals' own boxes, so it is never evaluated."""

    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.cls_score = nn.Linear(config.mlp_dim, config.num_classes)
        self.bbox_pred = nn.Linear(config.mlp_dim, config.num_classes * 4)

    def forward(self, fc7: Tensor) -> Tensor:
        return self.cls_score(fc7)


class BoxHead(nn.Module):
    def __init__(self, config: X152FPNConfig) -> None:
        super().__init__()
        self.feature_extractor = FeatureExtractor(config)
        self.predictor = Predictor(config)

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """-> (fc6 [R, D], class logits [R, K]) for the boxes of all images, concatenated."""
        fc6, fc7 = self.feature_extractor(features, boxes)
        return fc6, self.predictor(fc7)
