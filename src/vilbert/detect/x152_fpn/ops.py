"""The detector's box ops in plain torch/numpy, with maskrcnn-benchmark's (legacy Detectron) rules.

Legend: N images, R boxes, C channels, H x W a feature map, A anchors a location,
S = pooled size x sampling ratio (samples a side of an RoI), K classes.

The "legacy" conventions, all kept on purpose because the released features were computed with
them: a box of pixels x1..x2 is x2 - x1 + 1 wide (areas, IoU, box coding, clipping to w - 1);
NMS suppresses a box whose IoU with a kept box is >= the threshold (the C++ CPU kernel; the
CUDA kernel uses > , which differs only at exact equality); RoIAlign is the pre-"aligned"
version (no half-pixel shift, RoIs at least 1 cell wide, samples clamped at the last row).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

Tensor = torch.Tensor

# ---------------------------------------------------------------------------------------------
# Frozen batch norm


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms, no epsilon (as maskrcnn-benchmark)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + shift.to(x.dtype).reshape(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------
# Anchors


def _centred(ws: np.ndarray, hs: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Boxes [len(ws), 4] of widths ws / heights hs (legacy: x2 = x1 + w - 1) around (cx, cy)."""
    return np.stack([cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)], axis=1)


def cell_anchors(stride: int, size: float, aspect_ratios: tuple[float, ...]) -> Tensor:
    """Detectron's anchors of one FPN level: [len(aspect_ratios), 4] float32 around the first cell.

    A stride x stride base box is reshaped to each aspect ratio h/w keeping its area (sides
    rounded to whole pixels), then scaled by size / stride.
    """
    base = float(stride)
    centre = 0.5 * (base - 1)  # centre of pixels 0..stride-1
    ratios = np.asarray(aspect_ratios, dtype=np.float64)
    ws = np.round(np.sqrt(base * base / ratios))
    hs = np.round(ws * ratios)
    scale = float(size) / base
    return torch.from_numpy(_centred(ws * scale, hs * scale, centre, centre)).float()


def grid_anchors(cells: Tensor, stride: int, height: int, width: int) -> Tensor:
    """All anchors of a level [H*W*A, 4], location-major (row, column), then anchor."""
    device = cells.device
    xs = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)], dim=1)  # [H*W, 4]
    return (shifts[:, None, :] + cells.to(torch.float32)[None, :, :]).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# Box coding and geometry (legacy +1 widths)


BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def decode_boxes(
    deltas: Tensor, boxes: Tensor, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """Apply (dx, dy, dw, dh) deltas [R, 4] to boxes [R, 4] -> boxes [R, 4] (legacy box coder)."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=BBOX_XFORM_CLIP)
    dh = torch.clamp(deltas[:, 3] / wh, max=BBOX_XFORM_CLIP)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        [
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w - 1,
            pred_ctr_y + 0.5 * pred_h - 1,
        ],
        dim=1,
    )


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clamp x to [0, width - 1] and y to [0, height - 1]."""
    x = boxes[:, 0::2].clamp(min=0, max=width - 1)
    y = boxes[:, 1::2].clamp(min=0, max=height - 1)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def overlap_matrix(boxes: Tensor, threshold: float, chunk: int = 2048) -> Tensor:
    """[R, R] bool: IoU(i, j) >= threshold, computed as the NMS kernel does (same op order)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = box_area(boxes)
    rows = []
    for s in range(0, len(boxes), chunk):
        e = min(s + chunk, len(boxes))
        w = (torch.minimum(x2[s:e, None], x2[None]) - torch.maximum(x1[s:e, None], x1[None]) + 1).clamp(min=0)
        h = (torch.minimum(y2[s:e, None], y2[None]) - torch.maximum(y1[s:e, None], y1[None]) + 1).clamp(min=0)
        inter = w * h
        rows.append(inter / (areas[s:e, None] + areas[None] - inter) >= threshold)
    if not rows:
        return torch.zeros(0, 0, dtype=torch.bool, device=boxes.device)
    return torch.cat(rows, dim=0)


def _greedy_rows(boxes: np.ndarray, threshold: float, max_keep: int) -> list[int]:
    """Greedy NMS over boxes already in score order, one IoU row per kept box (numpy, CPU)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    removed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for i in range(len(boxes)):
        if removed[i]:
            continue
        keep.append(i)
        if len(keep) == max_keep:
            break
        w = np.maximum(np.minimum(x2[i], x2[i + 1 :]) - np.maximum(x1[i], x1[i + 1 :]) + 1, 0)
        h = np.maximum(np.minimum(y2[i], y2[i + 1 :]) - np.maximum(y1[i], y1[i + 1 :]) + 1, 0)
        inter = w * h
        removed[i + 1 :] |= inter / (areas[i] + areas[i + 1 :] - inter) >= threshold
    return keep


def _greedy_matrix(over: np.ndarray, max_keep: int) -> list[int]:
    removed = np.zeros(len(over), dtype=bool)
    keep: list[int] = []
    for i in range(len(over)):
        if removed[i]:
            continue
        keep.append(i)
        if len(keep) == max_keep:
            break
        removed |= over[i]
    return keep


def nms(boxes: Tensor, scores: Tensor, threshold: float, max_keep: int = -1) -> Tensor:
    """Greedy NMS (legacy +1 IoU, suppress at >= threshold) -> kept indices [R'] by score.

    Equal scores keep their input order. `max_keep` > 0 stops after that many (the same prefix
    the full run would give).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True)[1]
    limit = max_keep if max_keep > 0 else len(order)
    ordered = boxes[order]
    if ordered.device.type == "cpu":
        keep = _greedy_rows(ordered.detach().numpy(), threshold, limit)
    else:  # one device op for the matrix, the sequential pass on the host
        keep = _greedy_matrix(overlap_matrix(ordered, threshold).cpu().numpy(), limit)
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


# ---------------------------------------------------------------------------------------------
# RoIAlign (legacy) and FPN level assignment


def map_levels(
    boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224.0, canonical_level: float = 4.0
) -> Tensor:
    """FPN paper Eqn. 1: the pyramid level of each box [R] (0 = k_min)."""
    s = torch.sqrt(box_area(boxes))
    levels = torch.floor(canonical_level + torch.log2(s / canonical_scale + 1e-6))
    return levels.clamp(min=k_min, max=k_max).to(torch.int64) - k_min


def _sample_axis(start: Tensor, length: Tensor, pooled: int, ratio: int, size: int) -> tuple[Tensor, ...]:
    """Sample positions along one axis of each RoI -> (low, high, w_low, w_high, valid), each [R, S]."""
    dtype, device = start.dtype, start.device
    bin_size = length / pooled  # [R]
    p = torch.arange(pooled, dtype=dtype, device=device).repeat_interleave(ratio)  # [S]
    i = torch.arange(ratio, dtype=dtype, device=device).repeat(pooled) + 0.5  # [S]
    pos = start[:, None] + p[None] * bin_size[:, None] + i[None] * bin_size[:, None] / ratio  # [R, S]
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(dtype), pos)
    frac = pos - low.to(dtype)
    return low, high, 1 - frac, frac, valid


def _bin_weights(w_low: Tensor, w_high: Tensor, valid: Tensor, pooled: int, ratio: int) -> Tensor:
    """Per-axis pooling weights [R, P, 2S]: bin p averages its `ratio` samples' two taps
    (columns 2s, 2s + 1 of sample s), invalid samples weighing zero."""
    r, s = w_low.shape
    w = torch.stack([w_low, w_high], dim=2) * valid.to(w_low.dtype)[:, :, None]  # [R, S, 2]
    w = w.reshape(r, pooled, 2 * ratio) / ratio
    dense = w.new_zeros(r, pooled, pooled, 2 * ratio)
    diag = torch.arange(pooled, device=w.device)
    dense[:, diag, diag] = w  # bin p only reads its own samples
    return dense.reshape(r, pooled, 2 * s)


def roi_align(
    feature: Tensor, rois: Tensor, pooled: int, spatial_scale: float, sampling_ratio: int, chunk: int = 64
) -> Tensor:
    """Legacy RoIAlign: feature [N, C, H, W], rois [R, 5] (image index, x1, y1, x2, y2 in input
    pixels) -> [R, C, pooled, pooled], each bin the mean of sampling_ratio^2 bilinear samples.

    Bilinear weights are separable, so each RoI's 2S x 2S taps (S samples a side, two taps each)
    are gathered once and pooled by two small matmuls, Ay @ taps @ Ax^T."""
    n, c, height, width = feature.shape
    out = feature.new_zeros(len(rois), c, pooled, pooled)
    if len(rois) == 0:
        return out
    dtype = feature.dtype
    rois = rois.to(dtype)
    flat = feature.permute(0, 2, 3, 1).reshape(n * height * width, c)  # channels last [N*H*W, C]
    taps = 2 * pooled * sampling_ratio
    for a in range(0, len(rois), chunk):
        r = rois[a : a + chunk]
        m = len(r)
        x1, y1, x2, y2 = (r[:, k] * spatial_scale for k in range(1, 5))
        yl, yh, wyl, wyh, vy = _sample_axis(y1, torch.clamp(y2 - y1, min=1.0), pooled, sampling_ratio, height)
        xl, xh, wxl, wxh, vx = _sample_axis(x1, torch.clamp(x2 - x1, min=1.0), pooled, sampling_ratio, width)
        rows = torch.stack([yl, yh], dim=2).reshape(m, taps)  # [m, J]
        cols = torch.stack([xl, xh], dim=2).reshape(m, taps)  # [m, K]
        ay = _bin_weights(wyl, wyh, vy, pooled, sampling_ratio)  # [m, P, J]
        ax = _bin_weights(wxl, wxh, vx, pooled, sampling_ratio)  # [m, P, K]
        base = (r[:, 0].to(torch.int64) * height * width)[:, None, None]
        index = base + cols[:, :, None] + rows[:, None, :] * width  # [m, K, J]
        patch = flat.index_select(0, index.reshape(-1)).reshape(m, taps, taps * c)  # [m, K, J*C]
        t = torch.bmm(ax, patch).reshape(m, pooled, taps, c).transpose(1, 2)  # [m, J, Px, C]
        o = torch.bmm(ay, t.reshape(m, taps, pooled * c)).reshape(m, pooled, pooled, c)  # [m, Py, Px, C]
        out[a : a + m] = o.permute(0, 3, 1, 2)
    return out
