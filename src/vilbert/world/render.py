"""Drawing scenes: varied muted backgrounds, jittered saturated objects, occlusion by draw order.

Variety matters: backgrounds change hue, brightness, gradient direction and texture, and object
colours are jittered and sometimes outlined, so no fixed pixel or fixed colour value answers a
question. Everything is drawn from the `rng` given, so one (seed, image_id) gives the same bytes.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw

from vilbert.world.scene import COLOURS, Scene, shape_vertices

BACKGROUND_STYLES: tuple[str, ...] = ("gradient", "blobs", "stripes", "checker", "grain")


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    # Low saturation, mid value: never mistaken for one of the saturated object colours.
    h, s, v = rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.68)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """An [H,W,3] uint8 background in one of several styles (float32 math, few full-size passes)."""
    style = BACKGROUND_STYLES[int(rng.integers(len(BACKGROUND_STYLES)))]
    c0, c1 = _muted_colour(rng), _muted_colour(rng)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    # A linear ramp along direction theta, scaled to 0..1, is separable: ramp = gx[x] + gy[y].
    gx, gy = np.float32(np.cos(theta)) * t, np.float32(np.sin(theta)) * t
    span = max(float(gx.max() - gx.min() + gy.max() - gy.min()), 1e-6)
    gx, gy = (gx - gx.min()) / span, (gy - gy.min()) / span
    delta = (c1 - c0)[None, :]
    img = (gy[:, None] * delta)[:, None, :] + (c0[None, :] + gx[:, None] * delta)[None, :, :]  # [H,W,3]
    if style == "blobs":
        small = rng.normal(0.0, 18.0, size=(4, 4, 3)).astype(np.float32)
        blobs = [np.asarray(Image.fromarray(small[..., c]).resize((size, size), Image.BILINEAR)) for c in range(3)]
        img += np.stack(blobs, axis=-1)
    elif style == "stripes":
        period = rng.uniform(8, 28)
        phase = rng.uniform(0, 2 * np.pi)
        k = np.float32(2 * np.pi * size / period)
        wave = np.sin(k * (np.float32(np.cos(theta)) * t[None, :] + np.float32(np.sin(theta)) * t[:, None])
                      + np.float32(phase))
        img += np.float32(rng.uniform(6, 16)) * wave[..., None]
    elif style == "checker":
        cell = int(rng.integers(10, 32))
        idx = np.arange(size) // cell
        board = ((idx[None, :] + idx[:, None]) % 2).astype(np.float32) * 2 - 1
        img += np.float32(rng.uniform(5, 14)) * board[..., None]
    elif style == "grain":
        # Coarse grain (4x4 cells): texture without making the PNG incompressible.
        cells = rng.normal(0.0, 9.0, size=((size + 3) // 4, (size + 3) // 4, 1)).astype(np.float32)
        img += np.repeat(np.repeat(cells, 4, 0), 4, 1)[:size, :size]
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Draw `scene` on a random background; objects later in the list occlude earlier ones."""
    size = scene.width
    canvas = Image.fromarray(_background(rng, size), "RGB")
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        base = np.array(COLOURS[obj.colour], dtype=np.float32)
        fill = tuple(int(v) for v in np.clip(base + rng.uniform(-18, 18, size=3), 0, 255))
        outline = tuple(int(v * 0.55) for v in fill) if rng.random() < 0.5 else None
        width = int(rng.integers(1, 3)) if outline else 0
        if obj.shape == "circle":
            r = obj.radius
            draw.ellipse([obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r], fill=fill, outline=outline, width=width)
        else:
            pts = shape_vertices(obj.shape, obj.cx, obj.cy, obj.radius, obj.angle)
            draw.polygon(pts, fill=fill, outline=outline, width=width)
    return canvas


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes; a fixed compression level keeps the output byte-identical across runs.

    Level 1 is 2-3x faster to encode than the default 6 for files ~1.5x larger (~20 KiB at 224 px).
    """
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
