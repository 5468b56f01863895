"""Images in -> the detector's input batch, exactly as the port's `Preprocess` builds it.

RGB uint8 [H, W, 3] -> BGR float (what cv2.imread gives the reference) -> shortest side to
`min_size` unless the longest would pass `max_size` (sizes rounded half up) -> bilinear resize of the
float image (align_corners=False, no antialias) -> minus the BGR mean, / std -> zero-padded at the
right and bottom to the largest image of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vilbert.detect.bottom_up.config import BottomUpConfig
from vilbert.detect.bottom_up.ops import pad_to

Tensor = torch.Tensor


class ImageError(ValueError):
    """An input image that cannot be used (undecodable file, wrong shape or dtype); names the image."""


@dataclass
class ImageBatch:
    tensor: Tensor  # [N, 3, H, W] normalised BGR, padded
    sizes: Tensor  # [N, 2] (h, w) of each resized image before padding, int64
    scales_yx: Tensor  # [N, 2] original / resized, float32 (the port's box rescaling factors)
    original_sizes: list[tuple[int, int]]  # (height, width) of the inputs


def to_rgb_array(image: Any, name: str = "image") -> np.ndarray:
    """An RGB uint8 array [H, W, 3] from an array, a PIL image or an image file path."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise ImageError(f"{image}: cannot decode the image ({err}); expected a JPEG/PNG/... file PIL can read") from err
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected an RGB uint8 numpy array [H, W, 3], a PIL image or a path, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"{name}: expected an RGB uint8 array [H, W, 3], got dtype {image.dtype} shape {tuple(image.shape)}")
    if min(image.shape[:2]) < 1:
        raise ImageError(f"{name}: image has no pixels (shape {tuple(image.shape)})")
    return image


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w): the port's ResizeShortestEdge arithmetic, in Python floats."""
    scale = min_size * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = min_size, scale * width
    else:
        new_h, new_w = scale * height, min_size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def preprocess(images: Sequence[np.ndarray], config: BottomUpConfig, device: torch.device | str = "cpu") -> ImageBatch:
    """RGB uint8 arrays -> the normalised, padded BGR batch the backbone takes."""
    mean = torch.tensor(config.pixel_mean, device=device).view(3, 1, 1)
    std = torch.tensor(config.pixel_std, device=device).view(3, 1, 1)
    out, sizes, originals = [], [], []
    for rgb in images:
        bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).to(device).float()  # [H, W, 3]
        h, w = bgr.shape[:2]
        new_h, new_w = resized_size(h, w, config.min_size, config.max_size)
        # the port resizes the HWC float image through a permuted view; so do we (same kernel path)
        x = F.interpolate(bgr.permute(2, 0, 1).unsqueeze(0), (new_h, new_w), mode="bilinear", align_corners=False)
        out.append((x.squeeze(0) - mean) / std)
        sizes.append((new_h, new_w))
        originals.append((h, w))
    size_t = torch.tensor(sizes)
    scales = torch.true_divide(torch.tensor(originals), size_t)
    return ImageBatch(pad_to(out, config.pad_value), size_t.to(device), scales.to(device), originals)
