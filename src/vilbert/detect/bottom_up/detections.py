"""What the detector returns for one image (numpy arrays on the CPU, boxes in original pixels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    boxes: np.ndarray  # [N, 4] float32, x1 y1 x2 y2 in the input image's pixels
    scores: np.ndarray  # [N] float32: the selection rule's box confidence
    features: np.ndarray  # [N, D] float32: res5 output mean-pooled over the RoI (D = 2048)
    cls_prob: np.ndarray  # [N, K+1] float32: full class softmax, background is the LAST column
    objects: np.ndarray  # [N] int64: best foreground class (index into objects_vocab())
    attributes: np.ndarray  # [N] int64: best attribute (index into attributes_vocab())
    attribute_scores: np.ndarray  # [N] float32
    attr_prob: np.ndarray  # [N, A] float32: softmax over the A attributes ("no attribute" left out)
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.boxes)
