"""The bottom-up-attention detector's one typed config and its JSON round trip.

The default is the released model (Anderson et al. 2018, as converted by py-bottom-up-attention and
ported to plain PyTorch in transformers' `examples/research_projects/lxmert`). Where the port's hub
`config.yaml` is not public, the values come from the public code that produced the LXMERT features:

- architecture: py-bottom-up-attention `configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml`
  over `Base-RCNN-C4.yaml` and that repo's `detectron2/config/defaults.py` (ResNet-101, stride in the
  1x1 conv, Caffe max pool, RPN hidden 512, anchors 64-512 x {0.5, 1, 2}, RoIPool 14, res5 not halved
  (stride 1, dilation 2), 1600 classes, 400 attributes, box weights 10/10/5/5, BGR pixel mean);
- test-time values: its `demo/detectron2_mscoco_proposal_maxnms.py` (the LXMERT extraction script):
  short side 600 / long side 1000, RPN NMS 0.7 keeping 6000 -> 300, box NMS ladder 0.3, 0.4, ... 0.9
  until 36 boxes survive, at most 36 (min = max = 36);
- the alternative selection rule, `max_conf`, is peteanderson80/bottom-up-attention
  `tools/generate_tsv.py`: per-class NMS 0.3 on the proposals, a box kept at its best surviving class
  score, confidence >= 0.2, 10 to 100 boxes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SELECTIONS = ("max_class_nms", "max_conf")


@dataclass
class BottomUpConfig:
    """Every size, threshold and preprocessing constant of the bottom-up Faster R-CNN."""

    # Backbone: ResNet stem + res2..res4 (stride 16), Caffe style.
    stage_blocks: list[int] = field(default_factory=lambda: [3, 4, 23])  # res2, res3, res4
    stem_out_channels: int = 64
    width_per_group: int = 64  # bottleneck width of res2 (x2 per stage)
    num_groups: int = 1
    res2_out_channels: int = 256  # x2 per stage: res4 1024, res5 2048
    stride_in_1x1: bool = True  # MSRA/Caffe ResNet: the stride sits in the first 1x1 conv
    caffe_maxpool: bool = True  # stem max pool with pad 0 and ceil mode, as Caffe
    norm_eps: float = 1e-5
    # RPN on res4.
    rpn_hidden_channels: int = 512
    anchor_sizes: list[float] = field(default_factory=lambda: [64, 128, 256, 512])
    anchor_aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    anchor_offset: float = 0.0
    rpn_box_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    rpn_nms_threshold: float = 0.7
    rpn_pre_nms_top_k: int = 6000
    rpn_post_nms_top_k: int = 300
    rpn_min_box_size: float = 0.0
    # C4 box head: RoIPool on res4, res5 per RoI, mean-pooled.
    pooler_resolution: int = 14
    res5_blocks: int = 3
    res5_halve: bool = False  # False (the VG model): res5 keeps stride 1 and uses dilation 2
    num_classes: int = 1600  # foreground classes; the classifier adds background as the LAST column
    num_attributes: int = 400  # the attribute head adds "no attribute" as the LAST column
    box_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    # Preprocessing (the port's Preprocess): BGR, resize, minus mean, / std, zero-pad to the batch.
    min_size: int = 600
    max_size: int = 1000
    pixel_mean: list[float] = field(default_factory=lambda: [102.9801, 115.9465, 122.7717])  # BGR
    pixel_std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    pad_value: float = 0.0
    # Box selection.
    selection: str = "max_class_nms"
    nms_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])  # max_class_nms ladder
    min_boxes: int = 36
    max_boxes: int = 36
    conf_threshold: float = 0.2  # max_conf only (the port's rule does not use it)
    max_conf_nms_threshold: float = 0.3  # max_conf only

    def __post_init__(self) -> None:
        self.validate()

    @property
    def res4_channels(self) -> int:
        return self.res2_out_channels * 4

    @property
    def res5_channels(self) -> int:
        """Width of the region features (2048 for the released model)."""
        return self.res2_out_channels * 8

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.anchor_aspect_ratios)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent value."""
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection {self.selection!r} is not one of {SELECTIONS}")
        if len(self.stage_blocks) != 3 or min(self.stage_blocks) < 1:
            raise ValueError(f"stage_blocks {self.stage_blocks} must be 3 positive block counts (res2, res3, res4)")
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError(f"min_boxes {self.min_boxes} / max_boxes {self.max_boxes}: need 1 <= min <= max")
        if not self.nms_thresholds:
            raise ValueError("nms_thresholds is empty: the max_class_nms rule needs at least one threshold")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError(f"pixel_mean {self.pixel_mean} and pixel_std {self.pixel_std} need 3 values (BGR)")
        for name in ("rpn_box_weights", "box_weights"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"{name} {getattr(self, name)} needs 4 values (dx, dy, dw, dh)")
        if self.num_classes < 1 or self.num_attributes < 1:
            raise ValueError(f"num_classes {self.num_classes} and num_attributes {self.num_attributes} must be >= 1")
        if self.min_size < 1 or self.max_size < self.min_size:
            raise ValueError(f"min_size {self.min_size} / max_size {self.max_size}: need 1 <= min_size <= max_size")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BottomUpConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BottomUpConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BottomUpConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
