"""Images -> the padded BGR batch of extract_features.py, without OpenCV.

Legend: N images, H x W an image's size, H' x W' resized, Hp x Wp the padded canvas.

The script reads with PIL, flips RGB to BGR, subtracts the pixel mean (in float64, stored as
float32), resizes with `cv2.resize(..., fx=s, fy=s, interpolation=INTER_LINEAR)` and zero-pads
the batch to a multiple of 32. `cv2_linear_resize` reproduces OpenCV's INTER_LINEAR for float
images (checked against opencv-python 3.4.10, 4.3, 4.6 and 4.14; 5.0 differs by ~1e-5):
output size round(W * s), source coordinate (x + 0.5) / s - 0.5, edge samples on the edge pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

Tensor = torch.Tensor
ImageInput = str | Path | np.ndarray | Image.Image


class ImageDecodeError(ValueError):
    """An image input that cannot be read as an RGB picture (names the file or the input)."""


def load_rgb(image: ImageInput, name: str = "image") -> np.ndarray:
    """A path, PIL image or uint8 array [H, W] / [H, W, 3] -> uint8 RGB array [H, W, 3].

    Grey images are repeated over the channels (as the script does); other PIL modes, RGBA
    included, go through PIL's RGB conversion (as MMF's copy of the script does)."""
    rgb = _load_rgb(image, name)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError(f"{name}: empty image of shape {rgb.shape}")
    return rgb


def _load_rgb(image: ImageInput, name: str) -> np.ndarray:
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            with Image.open(path) as pil:
                pil.load()
                return _load_rgb(pil.copy(), str(path))
        except FileNotFoundError as err:
            raise ImageDecodeError(f"{path}: no such image file") from err
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ImageDecodeError(
                f"{path}: cannot decode the image ({err}); expected a JPEG/PNG/... file PIL can read"
            ) from err
    if isinstance(image, Image.Image):
        if image.mode == "L":
            return np.repeat(np.asarray(image)[:, :, None], 3, axis=2)
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageDecodeError(f"{name}: expected a uint8 array, got dtype {image.dtype}")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] == 3:
            return image
        raise ImageDecodeError(f"{name}: expected an RGB array [H, W, 3] or a grey one [H, W], got shape {image.shape}")
    raise ImageDecodeError(f"{name}: expected a path, a PIL image or a uint8 numpy array, got {type(image).__name__}")


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Short side to min_size unless the long side would then round above max_size."""
    short, long = min(height, width), max(height, width)
    scale = min_size / short
    if round(scale * long) > max_size:  # np.round, half to even, as Python's round
        scale = max_size / long
    return scale


def _axis(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and the float64 fraction toward i1 along one axis, OpenCV's way:
    position (i + 0.5) / scale - 0.5 in double; samples outside the first/last pixel move onto it."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (1.0 / scale) - 0.5
    i0 = np.floor(pos)
    frac = pos - i0
    i0 = i0.astype(np.int64)
    edge = (i0 < 0) | (i0 >= n_in - 1)
    frac[edge] = 0.0
    i0 = np.clip(i0, 0, n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), frac


def cv2_linear_resize(image: Tensor, scale: float) -> Tensor:
    """[C, H, W] float -> [C, round(H*scale), round(W*scale)] as cv2.resize(fx=fy=scale, INTER_LINEAR).

    The weights are the double-precision fractions rounded to the image's dtype (OpenCV 3.4-4.x
    for float32 and float64 images alike), horizontal pass first, then vertical."""
    _, h, w = image.shape
    out_h, out_w = round(h * scale), round(w * scale)
    dev, dt = image.device, image.dtype

    def weights(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        i0, i1, frac = _axis(n_in, n_out, scale)
        w1 = torch.from_numpy(frac).to(dev).to(dt)
        return torch.from_numpy(i0).to(dev), torch.from_numpy(i1).to(dev), 1 - w1, w1

    x0, x1, wx0, wx1 = weights(w, out_w)
    y0, y1, wy0, wy1 = weights(h, out_h)
    rows = torch.unique(torch.cat([y0, y1]))
    lookup = torch.zeros(h, dtype=torch.int64, device=dev)
    lookup[rows] = torch.arange(len(rows), device=dev)
    src = image[:, rows]  # the source rows needed [C, h', W]
    horiz = src[:, :, x0] * wx0 + src[:, :, x1] * wx1  # [C, h', W']
    return horiz[:, lookup[y0]] * wy0[:, None] + horiz[:, lookup[y1]] * wy1[:, None]  # [C, H', W']


@dataclass
class ImageBatch:
    """A padded batch: tensor [N, 3, Hp, Wp] BGR minus mean; per image its scale and sizes."""

    tensor: Tensor
    scales: list[float]
    sizes: list[tuple[int, int]]  # original (H, W)
    resized: list[tuple[int, int]]  # (H', W') before padding

    @property
    def canvas(self) -> tuple[int, int]:
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])


def preprocess(
    images: Sequence[np.ndarray],
    pixel_mean: Sequence[float],
    min_size: int,
    max_size: int,
    size_divisible: int,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
) -> ImageBatch:
    """uint8 RGB arrays -> ImageBatch (computed in `dtype`, as the script does in float32)."""
    mean = torch.tensor(pixel_mean, dtype=torch.float64, device=device).view(3, 1, 1)
    resized, scales, sizes = [], [], []
    for im in images:
        t = torch.from_numpy(np.array(im, dtype=np.uint8)).to(device)  # a copy: PIL arrays are read-only
        bgr = t.permute(2, 0, 1).flip(0).to(torch.float64)  # [3, H, W]
        bgr = (bgr - mean).to(dtype)
        scale = resize_scale(im.shape[0], im.shape[1], min_size, max_size)
        resized.append(cv2_linear_resize(bgr, scale))
        scales.append(scale)
        sizes.append((int(im.shape[0]), int(im.shape[1])))
    hp = max(r.shape[1] for r in resized)
    wp = max(r.shape[2] for r in resized)
    hp, wp = (-(-hp // size_divisible) * size_divisible, -(-wp // size_divisible) * size_divisible)
    batch = torch.zeros(len(resized), 3, hp, wp, dtype=dtype, device=device)
    for i, r in enumerate(resized):
        batch[i, :, : r.shape[1], : r.shape[2]] = r
    return ImageBatch(batch, scales, sizes, [(int(r.shape[1]), int(r.shape[2])) for r in resized])
