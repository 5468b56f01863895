"""The configuration of the ResNeXt-152 32x8d FPN Faster R-CNN (vqa-maskrcnn-benchmark).

The default is the full-size detector behind vilbert-multi-task's and MMF's region features,
as `detectron_model.pth` + `detectron_config.yaml` describe it. Every parameter name and shape
of that architecture was checked against the real checkpoint's load log (see the fixture
README); the fields that no parameter shape reveals (RPN test-time counts, stride placement,
anchor sizes) are maskrcnn-benchmark's defaults as the fork's own configs leave them.
A smaller config of the same structure (fewer blocks and channels) is built from JSON with
`from_dict`, e.g. the parity fixture's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class X152FPNConfig:
    """Architecture, preprocessing and box selection of the detector (reference defaults)."""

    # ResNeXt body: stem -> 4 stages of bottlenecks (grouped 3x3), stage i has 2**(i-1) x widths.
    stem_channels: int = 64  # MODEL.RESNETS.STEM_OUT_CHANNELS
    res2_channels: int = 256  # RES2_OUT_CHANNELS: output width of stage 2
    num_groups: int = 32  # NUM_GROUPS (the "32" of 32x8d)
    width_per_group: int = 8  # WIDTH_PER_GROUP (the "8d")
    stage_blocks: tuple[int, int, int, int] = (3, 8, 36, 3)
    stride_in_1x1: bool = False  # stride in the 3x3 conv, as Caffe2/FB ResNeXt
    fpn_channels: int = 512  # MODEL.BACKBONE.OUT_CHANNELS ("FPN_512")
    # RPN: one 3x3 conv head shared by P2-P6, 3 anchors a location.
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one size per level
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    rpn_pre_nms_top_n: int = 6000  # per level, by objectness
    rpn_post_nms_top_n: int = 1000  # per level, after NMS
    rpn_nms_threshold: float = 0.7
    rpn_min_size: int = 0
    rpn_fpn_post_nms_top_n: int = 2000  # per image, over all levels: the proposals scored
    # Box head: RoIAlign 7x7 on P2-P5 -> fc6 -> fc7 -> classes (+ unused per-class box deltas).
    pooler_resolution: int = 7
    pooler_scales: tuple[float, ...] = (0.25, 0.125, 0.0625, 0.03125)
    pooler_sampling_ratio: int = 2
    mlp_dim: int = 2048  # "MLP_2048": fc6 is the region feature
    num_classes: int = 1601  # Visual Genome 1600 objects + background
    # Preprocessing (extract_features.py): BGR float minus mean, short side min_size unless
    # the long side would exceed max_size, zero padding to a multiple of size_divisible.
    pixel_mean: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)
    min_size: int = 800
    max_size: int = 1333
    size_divisible: int = 32
    # Box selection (extract_features.py arguments and defaults).
    num_features: int = 100
    confidence_threshold: float = 0.0
    nms_threshold: float = 0.5  # per-class NMS of the extraction script
    include_background: bool = False  # --background: class 0 competes too
    batch_size: int = 2  # images padded together (padding changes results slightly)

    # (not a field: no annotation) fields that JSON gives as lists
    _TUPLES = ("stage_blocks", "anchor_sizes", "anchor_aspect_ratios", "anchor_strides", "pooler_scales", "pixel_mean")

    def __post_init__(self) -> None:
        for name in self._TUPLES:
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if len(self.stage_blocks) != 4 or min(self.stage_blocks) < 1:
            raise ValueError(f"stage_blocks must be 4 positive block counts, got {self.stage_blocks}")
        if self.num_groups < 1 or self.width_per_group < 1:
            raise ValueError(
                f"num_groups and width_per_group must be >= 1, got {self.num_groups}, {self.width_per_group}"
            )
        if not (len(self.anchor_sizes) == len(self.anchor_strides) == 5):
            raise ValueError(
                f"the FPN has 5 levels (P2-P6): need 5 anchor_sizes and anchor_strides, got "
                f"{len(self.anchor_sizes)} and {len(self.anchor_strides)}"
            )
        if len(self.pooler_scales) != 4:
            raise ValueError(f"pooler_scales must give the 4 pooled levels P2-P5, got {self.pooler_scales}")
        for s in self.pooler_scales:
            if not math.isclose(math.log2(s), round(math.log2(s))):
                raise ValueError(f"pooler_scales must be powers of two, got {s}")
        if self.pooler_sampling_ratio < 1:
            raise ValueError(
                f"pooler_sampling_ratio must be >= 1 (adaptive sampling is not supported), got {self.pooler_sampling_ratio}"
            )
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be >= 2, got {self.num_classes}")
        if self.min_size < 1 or self.max_size < self.min_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.size_divisible < 1 or self.size_divisible % max(self.anchor_strides[3], 1):
            raise ValueError(
                f"size_divisible {self.size_divisible} must be a multiple of the coarsest FPN stride {self.anchor_strides[3]}"
            )
        if self.num_features < 1 or self.batch_size < 1:
            raise ValueError(f"num_features and batch_size must be >= 1, got {self.num_features}, {self.batch_size}")
        if len(self.pixel_mean) != 3:
            raise ValueError(f"pixel_mean must have 3 values (B, G, R), got {self.pixel_mean}")

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Output widths of stages 2-5 (C2-C5)."""
        return tuple(self.res2_channels * 2**i for i in range(4))  # type: ignore[return-value]

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_aspect_ratios)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> X152FPNConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown X152FPNConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**data)
