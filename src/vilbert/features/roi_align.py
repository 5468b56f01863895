"""RoIAlign on plain torch ops (no torchvision).

Semantics follow the "aligned" RoIAlign of Detectron2 / torchvision (aligned=True): a box in image
pixels is scaled to the feature map and shifted by half a cell (map coordinate = x * scale - 0.5),
so that cell `i`'s centre sits at coordinate `i`. Each output bin averages
`sampling_ratio x sampling_ratio` bilinear samples placed evenly inside it.
Bilinear sampling is `grid_sample` with border clamping; samples further than one cell outside
the map read zero, exactly as the reference implementation does.

Every region is sampled independently of the others, so a region's output never depends on
which other regions share its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sample_grid(
    boxes: torch.Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample positions (x, y) in feature-map cell coordinates for each box.

    boxes [K,4] image pixels x1y1x2y2 -> xs [K, PW*S], ys [K, PH*S] (separable grid).
    """
    ph, pw = output_size
    scaled = boxes * spatial_scale - 0.5  # [K,4], map coordinates; cell i's centre at i
    x1, y1, x2, y2 = scaled.unbind(-1)
    bin_w = (x2 - x1) / pw  # [K]
    bin_h = (y2 - y1) / ph
    # Offsets of the samples inside the box, in bins: (j + (k + 0.5)/S) for bin j, sample k.
    steps_x = (torch.arange(pw * sampling_ratio, device=boxes.device, dtype=boxes.dtype) + 0.5) / sampling_ratio
    steps_y = (torch.arange(ph * sampling_ratio, device=boxes.device, dtype=boxes.dtype) + 0.5) / sampling_ratio
    xs = x1[:, None] + bin_w[:, None] * steps_x[None, :]  # [K, PW*S]
    ys = y1[:, None] + bin_h[:, None] * steps_y[None, :]  # [K, PH*S]
    return xs, ys


def roi_align(
    features: torch.Tensor,
    boxes: list[torch.Tensor],
    output_size: tuple[int, int] = (7, 7),
    spatial_scale: float = 1.0 / 32,
    sampling_ratio: int = 2,
) -> torch.Tensor:
    """Pool each box of each image to a fixed grid.

    features [B,C,H,W]; boxes: B tensors [K_b,4] in input-image pixels (x1,y1,x2,y2);
    returns [sum K_b, C, PH, PW] in the order of the boxes.
    """
    if features.dim() != 4 or len(boxes) != features.shape[0]:
        raise ValueError(f"expected features [B,C,H,W] and B box tensors, got {tuple(features.shape)} and {len(boxes)}")
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    ph, pw = output_size
    _, channels, height, width = features.shape
    counts = [int(b.shape[0]) for b in boxes]
    k_max = max(counts, default=0)
    if k_max == 0:
        return features.new_zeros((0, channels, ph, pw))
    # Pad every image's boxes to k_max so one grid_sample call serves the whole batch.
    coord_dtype = torch.promote_types(features.dtype, torch.float32)  # no half-precision coordinates
    padded = features.new_zeros((len(boxes), k_max, 4), dtype=coord_dtype)
    for b, bx in enumerate(boxes):
        padded[b, : counts[b]] = bx.to(coord_dtype)
    xs, ys = _sample_grid(padded.view(-1, 4), output_size, spatial_scale, sampling_ratio)
    sx, sy = xs.shape[1], ys.shape[1]
    xs = xs.view(len(boxes), k_max, 1, sx).expand(-1, -1, sy, -1)  # [B,K,SY,SX]
    ys = ys.view(len(boxes), k_max, sy, 1).expand(-1, -1, -1, sx)
    # Reference RoIAlign reads 0 beyond one cell outside the map and clamps within it.
    outside = (xs < -1) | (xs > width) | (ys < -1) | (ys > height)
    # Normalised grid for align_corners=True: cell centre i -> -1 + 2i/(size-1).
    gx = xs.clamp(0, width - 1) * (2.0 / max(width - 1, 1)) - 1.0
    gy = ys.clamp(0, height - 1) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).view(len(boxes), k_max * sy, sx, 2).to(features.dtype)
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=True)
    sampled = sampled.view(len(boxes), channels, k_max, sy, sx)  # [B,C,K,SY,SX]
    sampled = sampled.masked_fill(outside.view(len(boxes), 1, k_max, sy, sx), 0.0)
    # Average the S x S samples of each bin: [B,C,K,PH,S,PW,S] -> [B,C,K,PH,PW].
    pooled = sampled.view(len(boxes), channels, k_max, ph, sampling_ratio, pw, sampling_ratio).mean(dim=(4, 6))
    pooled = pooled.permute(0, 2, 1, 3, 4)  # [B,K,C,PH,PW]
    return torch.cat([pooled[b, : counts[b]] for b in range(len(boxes))], dim=0)


def _axis_weights(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Mean bilinear weight of each map index over a box's samples along one axis.

    coords [K,S] sample positions -> [K,size]. The reference bilinear read clamps a position in
    [-1, size] to [0, size-1] and reads zero beyond; its weight on index i is the tent
    max(0, 1 - |x - i|) of the clamped position.
    """
    inside = ((coords >= -1) & (coords <= size)).to(coords.dtype)  # [K,S]
    clamped = coords.clamp(0, size - 1)
    grid = torch.arange(size, device=coords.device, dtype=coords.dtype)
    tent = (1 - (clamped[:, :, None] - grid).abs()).clamp_min(0)  # [K,S,size]
    return (tent * inside[:, :, None]).mean(dim=1)


def roi_align_pooled(
    features: torch.Tensor,
    boxes: list[torch.Tensor],
    output_size: tuple[int, int] = (7, 7),
    spatial_scale: float = 1.0 / 32,
    sampling_ratio: int = 2,
) -> torch.Tensor:
    """`roi_align(...).mean((2, 3))` -> [sum K_b, C], computed without sampling every channel.

    The samples form a separable grid and bilinear weights factor into x and y parts, so the mean
    over all samples is a weight map wy ⊗ wx per box applied to the feature map: one small matmul
    per image ([K,H*W] @ [H*W,C]) instead of K*C*samples bilinear reads.
    """
    if features.dim() != 4 or len(boxes) != features.shape[0]:
        raise ValueError(f"expected features [B,C,H,W] and B box tensors, got {tuple(features.shape)} and {len(boxes)}")
    _, channels, height, width = features.shape
    coord_dtype = torch.promote_types(features.dtype, torch.float32)
    out = []
    for b, bx in enumerate(boxes):
        if len(bx) == 0:
            continue
        xs, ys = _sample_grid(bx.to(coord_dtype), output_size, spatial_scale, sampling_ratio)
        wx, wy = _axis_weights(xs, width), _axis_weights(ys, height)  # [K,W], [K,H]
        weights = (wy[:, :, None] * wx[:, None, :]).reshape(len(bx), height * width)  # [K,H*W]
        fmap = features[b].permute(1, 2, 0).reshape(height * width, channels)  # [H*W,C]
        out.append(weights.to(features.dtype) @ fmap)
    return torch.cat(out) if out else features.new_zeros((0, channels))
