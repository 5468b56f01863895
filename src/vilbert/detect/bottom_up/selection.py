"""Which regions an image keeps: the two public extraction rules, per image, in float32.

- `max_class_nms` (the port's `ROIOutputs` / `do_nms`, as py-bottom-up-attention's LXMERT extraction
  script): each proposal takes its best foreground class and that class's regressed box; one
  class-agnostic NMS over those boxes, trying each threshold of a ladder until at least `min_boxes`
  survive, keeping at most `max_boxes`, best first. (No confidence threshold: the port ignores it.) If
  no threshold reaches `min_boxes`, the last one's boxes are kept; the port fails there instead.
- `max_conf` (bottom-up-attention's `tools/generate_tsv.py`): NMS per foreground class over the
  proposal boxes (not regressed) in original pixels; a box keeps its best score among the classes whose
  NMS it survives; boxes with that score >= `conf_threshold`, in proposal order, or else the top
  `min_boxes` / `max_boxes` by that score when there are too few / too many.

Letters: R proposals of one image, K foreground classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vilbert.detect.bottom_up.ops import clip_boxes_, legacy_nms_keep, nms

Tensor = torch.Tensor


@dataclass
class Selection:
    ids: Tensor  # [n] proposal indices, in output order
    boxes: Tensor  # [n, 4] in original image pixels
    scores: Tensor  # [n]
    classes: Tensor  # [n] foreground class ids


def _empty(probs: Tensor) -> Selection:
    long = torch.zeros(0, dtype=torch.long, device=probs.device)
    return Selection(long, probs.new_zeros(0, 4), probs.new_zeros(0), long)


def max_class_nms(probs: Tensor, boxes: Tensor, size: Tensor, scale_yx: Tensor, thresholds: list[float],
                  min_boxes: int, max_boxes: int) -> Selection:
    """probs [R, K+1] (background last), boxes [R, K*4] regressed in resized pixels, size (h, w)."""
    if len(probs) == 0:
        return _empty(probs)
    scores = probs[:, :-1]
    num_classes = boxes.shape[1] // 4
    boxes = boxes.reshape(-1, 4)
    clip_boxes_(boxes, size[0], size[1])
    max_scores, max_classes = scores.max(1)
    idx = torch.arange(len(probs), device=probs.device) * num_classes + max_classes
    max_boxes_ = boxes[idx]  # [R, 4]: each proposal's box for its best class
    keep = None
    for t in thresholds:
        keep = nms(max_boxes_, max_scores, t, max_keep=max_boxes)
        if len(keep) >= min_boxes:
            break
    out = max_boxes_[keep]
    out[:, 0::2] *= scale_yx[1]
    out[:, 1::2] *= scale_yx[0]
    return Selection(keep, out, max_scores[keep], max_classes[keep])


def max_conf(probs: Tensor, proposals: Tensor, scale_yx: Tensor, conf_threshold: float, nms_threshold: float,
             min_boxes: int, max_boxes: int) -> Selection:
    """probs [R, K+1] (background last), proposals [R, 4] in resized pixels."""
    if len(probs) == 0:
        return _empty(probs)
    boxes = proposals.clone()
    boxes[:, 0::2] *= scale_yx[1]
    boxes[:, 1::2] *= scale_yx[0]
    scores = probs[:, :-1]
    kept = legacy_nms_keep(boxes, scores, nms_threshold)  # [R, K]
    conf = torch.where(kept, scores, torch.zeros_like(scores)).amax(1).double()  # generate_tsv keeps float64
    keep = torch.nonzero(conf >= conf_threshold).squeeze(1)
    if len(keep) < min_boxes:
        keep = torch.sort(conf, descending=True, stable=True).indices[:min_boxes]
    elif len(keep) > max_boxes:
        keep = torch.sort(conf, descending=True, stable=True).indices[:max_boxes]
    return Selection(keep, boxes[keep], conf[keep].float(), scores[keep].argmax(1))
