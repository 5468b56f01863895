"""Detection ops in plain torch, each with the exact arithmetic of the kernel it replaces.

- `nms`: torchvision's `nms` (CPU kernel): greedy by descending score, areas without +1, a box is
  suppressed when its IoU with a kept box is > threshold (compared in double, as the kernel does).
- `legacy_nms_keep`: py-faster-rcnn's `cpu_nms` (used by bottom-up-attention's generate_tsv.py):
  areas and overlaps with +1, suppressed when IoU >= threshold; run for many score columns at once.
- `roi_pool`: torchvision's `RoIPool` (Caffe max pooling over quantised bins), with the kernel's
  float32 bin arithmetic (`floor(ph * (roi_h / P))`, `ceil((ph + 1) * (roi_h / P))`).
- `apply_deltas`: detectron2's `Box2BoxTransform.apply_deltas`, operation for operation.

Letters: R boxes, K classes / score columns, C channels, H, W feature size, P pooled size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Largest dw/dh before exp: a 16 px box may grow to 1000 px (detectron2's default).
SCALE_CLAMP = math.log(1000.0 / 16)
_IOU_ROWS = 512  # candidates whose overlaps are computed at once
_POOL_BUDGET = 1 << 25  # elements of the column-gather buffer in roi_pool (128 MB at fp32)


def apply_deltas(deltas: Tensor, boxes: Tensor, weights: tuple[float, ...], scale_clamp: float = SCALE_CLAMP) -> Tensor:
    """Boxes [R, 4] x1y1x2y2 moved by deltas [R, k*4] (dx, dy, dw, dh per box) -> [R, k*4]."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    out = torch.zeros_like(deltas)
    out[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    out[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    out[:, 2::4] = pred_ctr_x + 0.5 * pred_w
    out[:, 3::4] = pred_ctr_y + 0.5 * pred_h
    return out


def clip_boxes_(boxes: Tensor, height: Tensor | int, width: Tensor | int) -> Tensor:
    """Clamp boxes [R, 4] in place into [0, width] x [0, height]."""
    if not torch.isfinite(boxes).all():
        raise FloatingPointError("box tensor contains inf or NaN (the detector's outputs overflowed)")
    boxes[:, 0].clamp_(min=0, max=width)
    boxes[:, 1].clamp_(min=0, max=height)
    boxes[:, 2].clamp_(min=0, max=width)
    boxes[:, 3].clamp_(min=0, max=height)
    return boxes


def _overlaps(boxes: Tensor, threshold: float, legacy: bool, rows: slice = slice(None)) -> np.ndarray:
    """[r, R] bool on the CPU: IoU(i, j) > threshold (>= with `legacy` +1 areas) for boxes i in `rows`,
    in the kernels' arithmetic (float32 IoU, compared in double)."""
    one = 1 if legacy else 0
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    xx1 = torch.maximum(x1[rows, None], x1[None])
    yy1 = torch.maximum(y1[rows, None], y1[None])
    xx2 = torch.minimum(x2[rows, None], x2[None])
    yy2 = torch.minimum(y2[rows, None], y2[None])
    w = (xx2 - xx1 + one).clamp(min=0)
    h = (yy2 - yy1 + one).clamp(min=0)
    inter = w * h
    iou = (inter / (areas[rows, None] + areas[None] - inter)).double()
    return ((iou >= threshold) if legacy else (iou > threshold)).cpu().numpy()


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Indices of the boxes greedy NMS keeps, best first (torchvision semantics); stops after `max_keep`.

    Overlaps are computed a block of candidates at a time, so stopping early skips the rest.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order]
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    limit = len(order) if max_keep is None else max_keep
    for start in range(0, len(order), _IOU_ROWS):
        if len(keep) >= limit:
            break
        block = _overlaps(ranked, iou_threshold, legacy=False, rows=slice(start, start + _IOU_ROWS))
        for i in range(start, min(start + _IOU_ROWS, len(order))):
            if suppressed[i]:
                continue
            keep.append(i)
            if len(keep) >= limit:
                break
            suppressed |= block[i - start]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def legacy_nms_keep(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Per column k of scores [R, K], which boxes py-faster-rcnn's cpu_nms keeps -> bool [R, K].

    All columns share one overlap matrix; the greedy scan runs for every column at once.
    """
    num_boxes, num_cols = scores.shape
    over = torch.from_numpy(_overlaps(boxes, iou_threshold, legacy=True)).to(scores.device)  # [R, R]
    order = torch.sort(scores.t(), dim=1, descending=True, stable=True).indices  # [K, R]
    suppressed = torch.zeros(num_cols, num_boxes, dtype=torch.bool, device=scores.device)
    keep = torch.zeros(num_cols, num_boxes, dtype=torch.bool, device=scores.device)
    for step in range(num_boxes):
        cand = order[:, step : step + 1]  # [K, 1]: each column's next box
        free = ~suppressed.gather(1, cand)  # [K, 1]
        keep.scatter_(1, cand, free)
        suppressed |= over[cand.squeeze(1)] & free  # rows of the kept boxes suppress their overlaps
    return keep.t()


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves away from zero (torch.round rounds halves to even)."""
    a = x.abs()
    r = torch.floor(a)
    r = r + (a - r >= 0.5).to(r.dtype)
    return torch.copysign(r, x)


def _bins(start: Tensor, end: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor]:
    """Bin [lo, hi) per RoI and bin along one axis, as torchvision's kernel: float32 arithmetic."""
    length = torch.clamp(end - start + 1, min=1).float()  # [R]
    bin_size = length / float(pooled)
    p = torch.arange(pooled, device=start.device, dtype=torch.float32)
    lo = torch.floor(p[None] * bin_size[:, None]).long() + start[:, None].long()
    hi = torch.ceil((p[None] + 1) * bin_size[:, None]).long() + start[:, None].long()
    return lo.clamp(0, size), hi.clamp(0, size)


def roi_pool(features: Tensor, rois: Tensor, pooled: int, spatial_scale: float) -> Tensor:
    """Max-pool features [N, C, H, W] over rois [R, 5] (batch index, x1, y1, x2, y2) -> [R, C, P, P].

    Separable: a max over each bin's columns, then over its rows; an empty bin is 0.
    """
    num_rois = len(rois)
    _, c, height, width = features.shape
    if num_rois == 0:
        return features.new_zeros(0, c, pooled, pooled)
    coords = rois[:, 1:].float() * float(spatial_scale)
    start_w, start_h, end_w, end_h = _round_half_away(coords).long().unbind(1)
    ws, we = _bins(start_w, end_w, pooled, width)  # [R, P]
    hs, he = _bins(start_h, end_h, pooled, height)
    batch = rois[:, 0].long()
    neg_inf = torch.finfo(features.dtype).min
    # Columns: gather up to J columns per bin, mask those past the bin's end.
    j = int((we - ws).max().clamp(min=1))
    col = ws[:, :, None] + torch.arange(j, device=features.device)  # [R, P, J]
    col_ok = col < we[:, :, None]
    by_w = features.permute(0, 3, 1, 2)  # [N, W, C, H]
    out = by_w.new_empty(num_rois, pooled, c, height)  # [R, Pw, C, H]
    step = max(1, _POOL_BUDGET // (pooled * j * c * height))  # RoIs per gather, bounded memory
    for r0 in range(0, num_rois, step):
        sl = slice(r0, r0 + step)
        g = by_w[batch[sl, None], col[sl].clamp(max=width - 1).flatten(1)]  # [r, P*J, C, H]
        g = g.view(g.shape[0], pooled, j, c, height).masked_fill(~col_ok[sl, :, :, None, None], neg_inf)
        out[sl] = g.amax(dim=2)
    # Rows: the same on the column maxima.
    i = int((he - hs).max().clamp(min=1))
    row = hs[:, :, None] + torch.arange(i, device=features.device)  # [R, P, I]
    row_ok = row < he[:, :, None]
    by_h = out.permute(0, 3, 1, 2)  # [R, H, Pw, C]
    g = by_h[torch.arange(num_rois, device=features.device)[:, None], row.clamp(max=height - 1).flatten(1)]
    g = g.view(num_rois, pooled, i, pooled, c).masked_fill(~row_ok[:, :, :, None, None], neg_inf)
    pooled_out = g.amax(dim=2)  # [R, Ph, Pw, C]
    empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]  # [R, Ph, Pw]
    pooled_out = pooled_out.masked_fill(empty[..., None], 0)
    return pooled_out.permute(0, 3, 1, 2).contiguous()


def pad_to(images: list[Tensor], value: float) -> Tensor:
    """Stack images [C, h_i, w_i] into [N, C, H, W], padding right and bottom with `value`."""
    height = max(im.shape[-2] for im in images)
    width = max(im.shape[-1] for im in images)
    return torch.stack([F.pad(im, [0, width - im.shape[-1], 0, height - im.shape[-2]], value=value) for im in images])
