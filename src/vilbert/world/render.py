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
    """An [H,W,3] float32 background in one of several styles."""
    style = BACKGROUND_STYLES[int(rng.integers(len(BACKGROUND_STYLES)))]
    c0, c1 = _muted_colour(rng), _muted_colour(rng)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * t[None, :] + np.sin(theta) * t[:, None]  # [H,W]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    img = c0[None, None, :] * (1 - ramp[..., None]) + c1[None, None, :] * ramp[..., None]
    if style == "blobs":
        small = rng.normal(0.0, 18.0, size=(4, 4, 3)).astype(np.float32)
        blobs = [np.asarray(Image.fromarray(small[..., c]).resize((size, size), Image.BILINEAR)) for c in range(3)]
        img = img + np.stack(blobs, axis=-1)  # [H,W,3]
    elif style == "stripes":
        period = rng.uniform(8, 28)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (t[None, :] * size * np.cos(theta) + t[:, None] * size * np.sin(theta))
                      / period + phase)
        img = img + rng.uniform(6, 16) * wave[..., None]
    elif style == "checker":
        cell = int(rng.integers(10, 32))
        idx = np.arange(size) // cell
        board = ((idx[None, :] + idx[:, None]) % 2).astype(np.float32) * 2 - 1
        img = img + rng.uniform(5, 14) * board[..., None]
    elif style == "grain":
        # Coarse grain (4x4 cells): texture without making the PNG incompressible.
        cells = rng.normal(0.0, 9.0, size=((size + 3) // 4, (size + 3) // 4, 1)).astype(np.float32)
        img = img + np.repeat(np.repeat(cells, 4, 0), 4, 1)[:size, :size]
    return img


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Draw `scene` on a random background; objects later in the list occlude earlier ones."""
    size = scene.width
    canvas = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8), "RGB")
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
    """PNG bytes; a fixed compression level keeps the output byte-identical across runs."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
